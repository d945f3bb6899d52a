"""A profile of films as a model sees them: per film, what its file says,
what its preprocessed pixels look like, who the patient is, what the model
answers, and the model's penultimate-layer embedding.

One function (profile_films) profiles both the reference (the evaluate stage,
on the test split's originals) and the films `cxr monitor` is given, so the
two are measured the same way: read, checked and preprocessed as served films
are (pipeline.records.film.checked_film, then model_input, as
pipeline.serve.films.film_from_bytes does), one model pass giving the served
(recalibrated) probabilities and the embedding together. The model is any
served model (pipeline.serve.xray_model.XrayModel): this package imports
nothing from serving, which imports it for `cxr monitor`.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipeline.core.model_io import model_inputs
from pipeline.core.patient import PatientMetadataError, age_is_missing, encode_patient
from pipeline.records.film import FilmChecks, checked_film, model_input
from pipeline.records.image_file import ImageError, read_image_bytes
from pipeline.records.imaging import image_dimensions, image_format

# (name, group, kind) of every scalar feature, in the order reports list them.
FILE_FEATURES = (("format", "file", "categorical"), ("bit_depth", "file", "categorical"),
                 ("width", "file", "continuous"), ("height", "file", "continuous"),
                 ("aspect", "file", "continuous"))
# Grey values of the preprocessed film (0..255, the model's input). noise: the
# mean absolute Laplacian, high-frequency energy (grain, or sharpness).
IMAGE_FEATURES = tuple((name, "image", "continuous") for name in
                       ("grey_mean", "grey_sd", "grey_p05", "grey_p50", "grey_p95", "noise"))
PATIENT_FEATURES = (("age", "patient", "continuous"), ("sex", "patient", "categorical"),
                    ("view", "patient", "categorical"))
SCALAR_FEATURES = FILE_FEATURES + IMAGE_FEATURES + PATIENT_FEATURES
HEAD_LAYER = "findings"  # pipeline.model.architectures: the Dense sigmoid head; its input is the embedding


class ServedModel(Protocol):
    """What profiling needs of a served model (pipeline.serve.xray_model.XrayModel has it)."""

    keras_model: object
    image_size: int
    fit: str
    checks: FilmChecks
    findings: tuple[str, ...]

    @property
    def uses_patient_metadata(self) -> bool: ...

    def recalibrate(self, probabilities: np.ndarray) -> np.ndarray: ...


@dataclass
class FilmProfiles:
    """The profiled films: one row of features, probabilities and embedding per film."""

    names: list[str] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)  # {feature name: value}, None when unknown
    probabilities: list[np.ndarray] = field(default_factory=list)  # served, in model.findings order
    embeddings: list[np.ndarray] = field(default_factory=list)
    patients: list[str | None] = field(default_factory=list)  # the film's patient, None when unknown
    failed: dict[str, str] = field(default_factory=dict)  # film -> reason it could not be profiled


def bit_depth(data: bytes, kind: str, name: str) -> int:
    """Bits per grey value as the file stores it: a PNG's IHDR bit depth, a
    DICOM's BitsStored, 8 for JPEG (baseline)."""
    if kind == "png":
        return int(data[24])
    if kind == "dicom":
        from pipeline.records.dicom import read_dataset

        dataset = read_dataset(data, name, with_pixels=False)
        return int(dataset.get("BitsStored", dataset.get("BitsAllocated", 0)) or 0)
    return 8


def file_features(data: bytes, name: str) -> dict:
    kind = image_format(data, name)
    width, height = image_dimensions(data, name)
    return {"format": kind, "bit_depth": str(bit_depth(data, kind, name)), "width": width, "height": height,
            "aspect": round(max(width, height) / min(width, height), 4)}


def image_features(pixels: np.ndarray) -> dict:
    """Grey-value statistics of one preprocessed (size, size, 1) film."""
    grey = pixels[..., 0].astype(np.float32)
    p05, p50, p95 = np.percentile(grey, [5, 50, 95])
    laplacian = cv2.Laplacian(grey, cv2.CV_32F)
    return {"grey_mean": float(grey.mean()), "grey_sd": float(grey.std()), "grey_p05": float(p05),
            "grey_p50": float(p50), "grey_p95": float(p95), "noise": float(np.abs(laplacian).mean())}


def patient_features(patient: dict | None) -> dict:
    patient = patient or {}
    age = patient.get("age")
    return {"age": None if age_is_missing(age) else float(age),
            "sex": patient.get("sex") or None, "view": patient.get("view") or None}


# One twin per model: a new one would trace its graph again on every call (seconds for a DenseNet).
_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def embedding_model(keras_model):
    """The model with two outputs: its head's input (the embedding) and its
    probabilities, computed in one pass."""
    import keras

    if keras_model in _TWINS:
        return _TWINS[keras_model]
    try:
        head = keras_model.get_layer(HEAD_LAYER)
    except ValueError:
        head = [layer for layer in keras_model.layers if isinstance(layer, keras.layers.Dense)][-1]
    _TWINS[keras_model] = keras.Model(keras_model.inputs, [head.input, keras_model.output])
    return _TWINS[keras_model]


# film i's {"age", "sex", "view"} and, when known, "patient_id", given its DICOM
# header's {"age", "sex", "view"} (None for PNG/JPEG); None when unknown
PatientOf = Callable[[int, dict | None], dict | None]


def model_pixels(data: bytes, name: str, model: ServedModel) -> tuple[np.ndarray, dict | None]:
    """A film's bytes -> (the model's float32 (size, size, 1) input, its DICOM
    patient fields), after the checks every served film passes."""
    gray, header = checked_film(data, name, model.checks)
    return model_input(gray, model.image_size, model.fit), header


def profile_films(model: ServedModel, films: Sequence[Path | str], patient_of: PatientOf, batch_size: int = 16,
                  progress=None) -> FilmProfiles:
    """Every film read, checked and profiled; a film that fails keeps its reason
    in `failed` and is left out. `patient_of(i, header)` gives film i's patient
    (None when unknown); a model that takes patient metadata needs it."""
    twin = embedding_model(model.keras_model)
    profiles = FilmProfiles()
    for start in range(0, len(films), batch_size):
        batch = []
        for i in range(start, min(start + batch_size, len(films))):
            name = str(films[i])
            try:
                data = read_image_bytes(films[i])
                pixels, header = model_pixels(data, name, model)
                patient = patient_of(i, header)
                encoded = None
                if model.uses_patient_metadata:
                    if patient is None:
                        raise PatientMetadataError("no age, sex or view for this film (give --metadata CSV)")
                    encoded = encode_patient(patient.get("age"), patient.get("sex"), patient.get("view"))
                row = {**file_features(data, name), **image_features(pixels), **patient_features(patient)}
                patient_id = (patient or {}).get("patient_id")
                batch.append((name, row, pixels, encoded, None if patient_id is None else str(patient_id)))
            except ImageError as exc:
                profiles.failed[name] = str(exc).removeprefix(f"{name}: ")
            except PatientMetadataError as exc:
                profiles.failed[name] = f"patient metadata: {exc}"
            except Exception as exc:  # noqa: BLE001 - one hostile film must not end the profile
                profiles.failed[name] = f"cannot read: {type(exc).__name__}: {exc}"
        if batch:
            images = np.stack([pixels for _, _, pixels, _, _ in batch])
            metadata = np.stack([encoded for *_, encoded, _ in batch]) if model.uses_patient_metadata else None
            embedding, raw = twin.predict_on_batch(model_inputs(model.keras_model, images, metadata))
            served = model.recalibrate(np.asarray(raw))
            for (name, row, _, _, patient_id), probabilities, vector in zip(batch, served, np.asarray(embedding)):
                profiles.names.append(name)
                profiles.patients.append(patient_id)
                profiles.features.append(row)
                profiles.probabilities.append(probabilities)
                profiles.embeddings.append(vector.astype(np.float64))
        if progress is not None:
            progress.advance(min(batch_size, len(films) - start))
    return profiles
