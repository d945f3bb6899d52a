"""Prediction API: load a trained or registered model, preprocess X-rays the way
training did, predict the 14 findings and explain one with Grad-CAM.

    from pipeline import load_model, preprocess_xray, generate_gradcam
    model = load_model("models:/chestxray@champion")
    image = model.preprocess("chest.png")  # or preprocess_xray(path, size, fit); PNG, JPEG or DICOM
    probabilities, heatmap = model.predict(image), generate_gradcam(model, image)

Films are checked before they are predicted, as training's are
(pipeline.records.film): a blank film, a shorter side below MIN_SIDE, an aspect
ratio beyond MAX_ASPECT or a DICOM whose ViewPosition is lateral raise
ImageError with the reason. model.read(path)
also gives a DICOM's PatientAge, PatientSex and ViewPosition.

A model trained with patient metadata (train.use_metadata) also needs each
image's age, sex and view: model.predict(image, metadata={"age": 61,
"sex": "F", "view": "AP"}), or a list of such dicts for a batch.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import image_size_of, model_inputs
from pipeline.core.tracking import ARGUMENT_REMEDY, ENV_REMEDY
from pipeline.core.tracking import tracking_uri as configured_tracking_uri
from pipeline.records.film import (  # noqa: F401 - re-exported for callers
    DEFAULT_CHECKS,
    FilmChecks,
    LateralViewError,
    is_dicom,
)
from pipeline.serve.films import (  # noqa: F401 - re-exported: the prediction API in one import
    DEFAULT_FIT,
    Film,
    finding_index,
    image_batch,
    patient_batch,
    preprocess_xray,
    read_film,
)
from pipeline.serve.model_store import MLFLOW_SCHEMES, MLFLOW_URI_FORMS, load_mlflow_model
from pipeline.serve.patient_csv import read_patient_metadata  # noqa: F401 - re-exported
from pipeline.serve.xray_model import (  # noqa: F401 - re-exported
    DEFAULT_THRESHOLD,
    ModelLoadError,
    ModelStoreError,
    XrayModel,
    read_thresholds,
)

if TYPE_CHECKING:  # Keras (TensorFlow) loads with the first model, so that a broken store is reported in seconds
    import keras


def generate_gradcam(
    model: XrayModel | keras.Model,
    image: np.ndarray,
    layer_name: str | None = None,
    finding: str | int | None = None,
    metadata=None,
) -> np.ndarray:
    """Grad-CAM heatmap (H, W) in [0, 1] for one preprocessed image; by default
    for the finding the model rates most probable. `metadata` as for predict."""
    keras_model = model.keras_model if isinstance(model, XrayModel) else model
    batch, single = image_batch(image, image_size_of(keras_model))
    if not single:
        raise ValueError(f"generate_gradcam takes one image, got a batch of shape {batch.shape}")
    encoded = patient_batch(metadata, 1)
    if finding is None:
        index = int(np.argmax(keras_model(model_inputs(keras_model, batch, encoded), training=False)[0]))
    else:
        index = finding_index(finding)
    from pipeline.explain.gradcam import grad_cam

    return grad_cam(keras_model, batch, np.array([index]), layer_name, metadata=encoded)[0]


def load_model(
    uri: Path | str, tracking_uri: str | None = None, thresholds: dict[str, float] | Path | str | None = None,
    timeout_s: float | None = None,
) -> XrayModel:
    """A model from a `.keras` file or an MLflow URI (models:/name@alias,
    models:/name/version, runs:/run_id/model).

    The tracking store is checked first, writing nothing (require_tracking_store):
    a missing, empty or damaged SQLite file, or a server that does not answer,
    raises ModelStoreError in seconds, as does any later failure of the store.
    A server's calls wait at most about `timeout_s` each (default: params.yaml's
    mlflow.timeout_s in the working directory, else 60), set for the process in
    MLFLOW_HTTP_REQUEST_* (values already there win).

    Registered models carry their findings, thresholds and preprocessing in
    their metadata. A bare `.keras` file has none: its image size comes from its
    input shape, fit is "crop" and thresholds are `thresholds` (a dict or a JSON
    file such as reports/evaluate/thresholds.json), else 0.5 each. `thresholds`
    given with an MLflow URI overrides the registered ones.
    """
    uri = str(uri)
    if uri.startswith(MLFLOW_SCHEMES):
        remedy = ARGUMENT_REMEDY if tracking_uri else ENV_REMEDY
        model = load_mlflow_model(uri, tracking_uri or configured_tracking_uri(), timeout_s, remedy)
    else:
        model = load_keras_file(Path(uri))
    if thresholds is not None:
        model.thresholds = read_thresholds(thresholds)
        from_file = isinstance(thresholds, (str, Path))
        model.thresholds_source = str(thresholds) if from_file else "given by the caller"
    return model


def load_keras_file(path: Path) -> XrayModel:
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    if path.suffix != ".keras":
        raise ModelLoadError(f"{path}: not a .keras file or an MLflow URI ({MLFLOW_URI_FORMS})")
    import keras

    try:
        keras_model = keras.models.load_model(path, compile=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{path}: cannot load as a Keras model: {exc}") from exc
    return XrayModel(
        keras_model,
        thresholds={f: DEFAULT_THRESHOLD for f in FINDINGS},
        image_size=image_size_of(keras_model),
        source=str(path),
        thresholds_source=f"default {DEFAULT_THRESHOLD} (a bare .keras file has no thresholds)",
    )
