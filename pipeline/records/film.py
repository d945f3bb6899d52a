"""Which files are films a model may see: one set of checks for training and serving.

The preprocess stage and every serving path (`cxr predict`, `cxr evaluate`,
pipeline.serve.predict) read a film through read_checked_film, so a film
refused when served is never trained on, and the other way round:
  1. the file (pipeline.records.image_file): a regular file, a PNG, JPEG or
     DICOM signature, within the byte limit;
  2. the header, before decoding: the pixel limit, the film's shape
     (imaging.check_film_shape), a DICOM's view (lateral films refused) and
     its embedded codestream (pipeline.records.dicom);
  3. the decoded pixels: a blank or constant film (all one grey, e.g. an
     all-zero export or a DICOM with RescaleSlope 0) is refused, because a
     model still gives it scores, confidently and meaninglessly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.records.image_file import MAX_FILE_BYTES, ImageError, check_film_bytes, read_image_bytes
from pipeline.records.imaging import (
    MAX_ASPECT,
    MIN_SIDE,
    check_film_shape,
    decode_to_gray8,
    encode_image,
    image_dimensions,
    image_format,
    resize_square,
)

# The least grey-level range (max - min, 8-bit) of a film. A chest film spans
# most of 0..255 (NIH's originals: 200 or more); a range below 8 is a blank,
# constant or nearly constant image, not a radiograph.
MIN_GREY_RANGE = 8


class LateralViewError(ImageError):
    """A DICOM whose ViewPosition is lateral: the models learn from, and are tested on, frontal films only."""

    def __init__(self, name: str, view: str):
        self.name, self.view = name, view
        super().__init__(f"{name}: lateral view (ViewPosition {view}): the models learn from and are tested on "
                         f"frontal PA/AP films (FilmChecks(allow_lateral=True) to predict anyway)")


@dataclass(frozen=True)
class FilmChecks:
    """What a film must be to be trained on or predicted: frontal, not blank, and
    not too small or elongated to be a chest film."""

    min_side: int = MIN_SIDE
    max_aspect: float = MAX_ASPECT
    allow_lateral: bool = False
    min_grey_range: int = MIN_GREY_RANGE


DEFAULT_CHECKS = FilmChecks()


def is_dicom(data: bytes, name: str) -> bool:
    """Whether imaging reads these bytes as DICOM (its magic bytes; a .dcm name without the preamble too)."""
    try:
        return image_format(data, name) == "dicom"
    except ImageError:
        return False


def dicom_patient(data: bytes, name: str) -> dict:
    """{"age", "sex", "view"} from a DICOM's header (pipeline.records.dicom.read_dicom_patient)."""
    from pipeline.records.dicom import read_dicom_patient  # pydicom: only when a DICOM arrives

    try:
        return read_dicom_patient(data)
    except ImageError as exc:  # it names the bytes "DICOM"; the user knows the file by its path
        raise ImageError(f"{name}: {str(exc).removeprefix('DICOM: ')}") from exc


def check_not_blank(gray: np.ndarray, name: str, min_grey_range: int = MIN_GREY_RANGE) -> None:
    """ImageError when a decoded 8-bit film's grey levels span less than min_grey_range."""
    low, high, _, _ = cv2.minMaxLoc(gray)
    if high - low < min_grey_range:
        shade = f"all grey level {int(low)}" if high == low else f"grey levels {int(low)} to {int(high)} only"
        raise ImageError(f"{name}: blank film ({shade}; a radiograph spans at least {min_grey_range} levels)")


def read_checked_film(path: Path | str, checks: FilmChecks = DEFAULT_CHECKS) -> tuple[np.ndarray, dict | None]:
    """A film's 2-D uint8 grey image and its DICOM patient fields (None for PNG/JPEG),
    after every check of the module docstring; ImageError naming the file otherwise."""
    return checked_film(read_image_bytes(path), str(path), checks)


def checked_film(data: bytes, name: str, checks: FilmChecks = DEFAULT_CHECKS,
                 max_bytes: int = MAX_FILE_BYTES) -> tuple[np.ndarray, dict | None]:
    """read_checked_film for a film's bytes however they arrived (a file, a
    request to the model server): the same checks, in the same order, and
    ImageError naming the film as `name`."""
    check_film_bytes(data, name, max_bytes)
    width, height = image_dimensions(data, name)
    check_film_shape(width, height, name, checks.min_side, checks.max_aspect)
    patient = None
    if is_dicom(data, name):
        from pipeline.records.dicom import LATERAL_VIEWS  # pydicom: only when a DICOM arrives

        patient = dicom_patient(data, name)
        if patient.get("view") in LATERAL_VIEWS and not checks.allow_lateral:
            raise LateralViewError(name, patient["view"])
    gray = decode_to_gray8(data, name)
    check_not_blank(gray, name, checks.min_grey_range)
    return gray, patient


def model_input(gray: np.ndarray, image_size: int, fit: str = "crop") -> np.ndarray:
    """A checked 8-bit film as a model reads it: float32 (size, size, 1), grey
    values 0..255, made square by `fit` and resized as preprocess does
    (load_xray's convention). Every path that brings a film to a model calls this."""
    return resize_square(gray, image_size, fit).astype(np.float32)[..., None]


def prepare_image(
    task: tuple[str, int, str, str, int, int, float],
) -> tuple[bytes | None, int, int, str | None]:
    """The preprocess stage's work per image, run in its worker processes:
    (path, size, fit, encoding, jpeg_quality, min_side, max_aspect) ->
    (encoded, width, height, error). The film passes the checks a served film
    passes (pipeline.records.film.read_checked_film), so what serving refuses
    is never trained on; any failure, a decoder's own exception or a memory
    error included, is the film's quarantine reason, never the run's end.

    Here, not in pipeline.records.preprocess, so that workers import only OpenCV and NumPy.
    """
    path, size, fit, encoding, quality, min_side, max_aspect = task
    try:
        gray, _ = read_checked_film(path, FilmChecks(min_side=min_side, max_aspect=max_aspect))
        height, width = gray.shape
        return encode_image(resize_square(gray, size, fit), encoding, quality), width, height, None
    except ImageError as exc:
        return None, 0, 0, str(exc)
    except Exception as exc:  # noqa: BLE001 - a decoder's bug on one hostile file must not end the run
        detail = " ".join(str(exc).split()) or "no detail"
        return None, 0, 0, f"{path}: cannot be decoded ({type(exc).__name__}: {detail})"
