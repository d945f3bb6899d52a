"""A film for serving: read and checked exactly as training's are
(pipeline.records.film), from a file or from bytes posted to the model
server, preprocessed to the model's input, with what its DICOM header says
about the patient; and patient metadata for a batch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.labels import FINDINGS, NUM_FINDINGS
from pipeline.core.patient import PatientMetadataError, encode_patient_input
from pipeline.records.film import DEFAULT_CHECKS, FilmChecks, checked_film, model_input, read_checked_film
from pipeline.records.image_file import MAX_FILE_BYTES

DEFAULT_FIT = "crop"


@dataclass
class Film:
    """One checked, preprocessed film, and what its DICOM header says about the patient."""

    pixels: np.ndarray  # float32 (size, size, 1) grey values 0..255
    # {"age", "sex", "view"} from a DICOM header (each None when absent); None for PNG/JPEG.
    patient: dict | None = None


def read_film(path: Path | str, image_size: int, fit: str = DEFAULT_FIT, checks: FilmChecks = DEFAULT_CHECKS) -> Film:
    """A PNG, JPEG or DICOM file -> Film, after the checks training's films pass
    (pipeline.records.film.read_checked_film: ImageError naming the file); the
    pixels are training's convention (load_xray)."""
    return preprocessed(*read_checked_film(path, checks), image_size, fit)


def film_from_bytes(data: bytes, name: str, image_size: int, fit: str = DEFAULT_FIT,
                    checks: FilmChecks = DEFAULT_CHECKS, max_bytes: int = MAX_FILE_BYTES) -> Film:
    """read_film for a film's bytes (a request to the model server): the same
    checks and preprocessing, errors naming the film as `name`."""
    return preprocessed(*checked_film(data, name, checks, max_bytes), image_size, fit)


def preprocessed(gray: np.ndarray, patient: dict | None, image_size: int, fit: str) -> Film:
    return Film(model_input(gray, image_size, fit), patient)


def header_patient(patient: dict, remedy: str) -> dict:
    """A DICOM header's patient fields, or PatientMetadataError naming the tags
    it lacks and `remedy` (a missing age is imputed; sex and view are not)."""
    missing = [tag for key, tag in (("sex", "PatientSex"), ("view", "ViewPosition")) if not patient.get(key)]
    if missing:
        raise PatientMetadataError(f"the DICOM header has no {' or '.join(missing)}: {remedy}")
    return patient


def preprocess_xray(
    path: Path | str, image_size: int = 320, fit: str = DEFAULT_FIT, checks: FilmChecks = DEFAULT_CHECKS
) -> np.ndarray:
    """Any PNG/JPEG/DICOM X-ray -> float32 (size, size, 1) grey values 0..255, exactly as in training;
    ImageError for a film that `checks` refuse (see read_film)."""
    return read_film(path, image_size, fit, checks).pixels


def image_batch(images: np.ndarray, image_size: int) -> tuple[np.ndarray, bool]:
    """(H, W), (H, W, 1) or (n, H, W, 1) -> float32 (n, H, W, 1), and whether it was one image."""
    array = np.asarray(images, dtype=np.float32)
    single = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1)
    if array.ndim == 2:
        array = array[..., None]
    if single:
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != (image_size, image_size, 1):
        raise ValueError(
            f"expected ({image_size}, {image_size}, 1) images or a batch of them (preprocess_xray's "
            f"output), got shape {np.shape(images)}"
        )
    return array, single


def patient_batch(metadata, count: int) -> np.ndarray | None:
    """None, or metadata in any form encode_patient_input takes -> float32 (count, 3)."""
    return None if metadata is None else encode_patient_input(metadata, count)


def finding_index(finding: str | int) -> int:
    """A finding's position in the model output, by name or index."""
    if isinstance(finding, str):
        if finding not in FINDINGS:
            raise ValueError(f"unknown finding {finding!r}; one of {', '.join(FINDINGS)}")
        return FINDINGS.index(finding)
    if not 0 <= int(finding) < NUM_FINDINGS:
        raise ValueError(f"finding index must be 0..{NUM_FINDINGS - 1}, got {finding}")
    return int(finding)
