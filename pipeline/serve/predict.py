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

import contextlib
import json
import re
import sqlite3
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.labels import FINDINGS, NUM_FINDINGS
from pipeline.core.model_io import image_size_of, model_inputs, uses_patient_metadata
from pipeline.core.patient import encode_patient_input
from pipeline.core.recalibration import served_probabilities
from pipeline.core.store_lock import LEASE_SUFFIX, StoreError, check_sqlite_file, sqlite_path
from pipeline.core.tracking import (
    ARGUMENT_REMEDY,
    ENV_REMEDY,
    TrackingServerError,
    bound_http_waits,
    check_tracking_server,
    disable_telemetry,
    redacted,
)
from pipeline.core.tracking import tracking_uri as configured_tracking_uri
from pipeline.records.film import (  # noqa: F401 - LateralViewError, is_dicom: re-exported for callers
    DEFAULT_CHECKS,
    FilmChecks,
    LateralViewError,
    is_dicom,
    read_checked_film,
)
from pipeline.records.imaging import resize_square

if TYPE_CHECKING:  # Keras (TensorFlow) loads with the first model, so that a broken store is reported in seconds
    import keras

DEFAULT_THRESHOLD = 0.5
DEFAULT_FIT = "crop"
MODEL_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
MODEL_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
RUN_MODEL_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<name>[^/]+)$")
MLFLOW_SCHEMES = ("models:", "runs:")
MLFLOW_URI_FORMS = "models:/name@alias, models:/name/version or runs:/run_id/model"
# Tables every MLflow SQLite store has; without them MLflow would create them in whatever file it is given.
MLFLOW_TABLES = ("experiments", "runs", "registered_models", "model_versions")
# MLflow errors that are about the model asked for (no such alias, version or run), not about the store.
MODEL_ERROR_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class ModelLoadError(RuntimeError):
    """A model URI or file that cannot be served; the message names it and says why."""


class ModelStoreError(ModelLoadError):
    """The tracking store a models:/ or runs:/ URI needs is missing, not an MLflow store, or fails."""


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
    gray, patient = read_checked_film(path, checks)
    return Film(resize_square(gray, image_size, fit).astype(np.float32)[..., None], patient)


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


def read_patient_metadata(path: Path | str) -> dict[str, dict]:
    """{image file name: {"age", "sex", "view"}} from NIH's Data_Entry_2017.csv
    (or the Kaggle sample's CSV) or any CSV with columns image_id, age, sex and
    view, such as the ingest stage's manifest.csv."""
    import pandas as pd

    from pipeline.data.csv_file import encoding_message
    from pipeline.data.nih import REQUIRED_COLUMNS, DataEntryError, read_data_entry

    path = Path(path)
    try:
        header = pd.read_csv(path, nrows=0).columns
        if REQUIRED_COLUMNS[0] in header:
            frame = read_data_entry(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            missing = [c for c in ("image_id", "age", "sex", "view") if c not in frame.columns]
            if missing:
                raise ValueError(f"{path}: no column {', '.join(missing)} (expected NIH's Data_Entry_2017.csv "
                                 f"or columns image_id, age, sex, view)")
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read patient metadata: {encoding_message(path)}") from exc
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, DataEntryError) as exc:
        raise ValueError(f"{path}: cannot read patient metadata: {exc}") from exc
    return {str(row.image_id): {"age": row.age, "sex": row.sex, "view": row.view}
            for row in frame.itertuples(index=False)}


def finding_index(finding: str | int) -> int:
    """A finding's position in the model output, by name or index."""
    if isinstance(finding, str):
        if finding not in FINDINGS:
            raise ValueError(f"unknown finding {finding!r}; one of {', '.join(FINDINGS)}")
        return FINDINGS.index(finding)
    if not 0 <= int(finding) < NUM_FINDINGS:
        raise ValueError(f"finding index must be 0..{NUM_FINDINGS - 1}, got {finding}")
    return int(finding)


@dataclass
class XrayModel:
    """A Keras classifier with what serving it needs: label order, operating
    thresholds and the preprocessing it was trained with."""

    keras_model: keras.Model
    thresholds: dict[str, float]
    image_size: int
    fit: str = DEFAULT_FIT
    source: str = ""
    # Where the thresholds came from: the model's metadata, a file, or the 0.5 default.
    thresholds_source: str = ""
    findings: tuple[str, ...] = FINDINGS
    # Fitted on validation by the evaluate stage (evaluate.calibration); None = raw outputs.
    recalibration: dict | None = None
    # The registered version and run an MLflow URI resolved to; None for a .keras file (and version for runs:/).
    version: str | None = None
    run_id: str | None = None
    checks: FilmChecks = field(default_factory=FilmChecks)

    def read(self, path: Path | str) -> Film:
        """A film checked (self.checks) and preprocessed for this model, with its DICOM patient fields."""
        return read_film(path, self.image_size, self.fit, self.checks)

    def preprocess(self, path: Path | str) -> np.ndarray:
        return self.read(path).pixels

    def identity(self) -> str:
        """Which model answered: the URI, and the registered version and run it resolved to."""
        version = [f"= version {self.version}"] if self.version else []
        run = [f"(run {self.run_id})"] if self.run_id else []
        return " ".join([self.source, *version, *run])

    @property
    def uses_patient_metadata(self) -> bool:
        """Whether predict needs each image's age, sex and view."""
        return uses_patient_metadata(self.keras_model)

    def predict(self, images: np.ndarray, metadata=None, batch_size: int = 32) -> np.ndarray:
        """Probabilities in `findings` order: (14,) for one image, (n, 14) for a batch.
        `metadata`: required by a model trained with it (see patient_batch)."""
        batch, single = image_batch(images, self.image_size)
        inputs = model_inputs(self.keras_model, batch, patient_batch(metadata, len(batch)))
        probabilities = self.recalibrate(self.keras_model.predict(inputs, batch_size=batch_size, verbose=0))
        return probabilities[0] if single else probabilities

    def recalibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """The network's (n, 14) outputs through the model's recalibration (as
        is without one), in float64: the one numeric policy of
        pipeline.core.recalibration, so a film served here gets the decision
        evaluate reported for it."""
        return served_probabilities(probabilities, self.recalibration)

    def positive_findings(self, probabilities: np.ndarray) -> list[str]:
        """Names of the findings at or above their thresholds, for one image's (14,) probabilities."""
        # float64 whatever the caller passes: a float32 compared with a float64
        # threshold is rounded to float32 first (NumPy's rule), and may cross it
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != (NUM_FINDINGS,):
            raise ValueError(f"expected {NUM_FINDINGS} probabilities, got shape {probabilities.shape}")
        return [f for f, p in zip(self.findings, probabilities) if p >= self.thresholds[f]]


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


def read_thresholds(thresholds: dict[str, float] | Path | str, name: str = "thresholds") -> dict[str, float]:
    """One threshold per finding, from a dict or a JSON file of {finding: threshold}."""
    if isinstance(thresholds, (str, Path)):
        name = str(thresholds)
        try:
            thresholds = json.loads(Path(thresholds).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{name}: cannot read thresholds: {exc}") from exc
    if not isinstance(thresholds, dict) or set(thresholds) != set(FINDINGS):
        found = sorted(thresholds) if isinstance(thresholds, dict) else type(thresholds).__name__
        raise ModelLoadError(f"{name}: expected one threshold for each of {', '.join(FINDINGS)}; got {found}")
    return {f: float(thresholds[f]) for f in FINDINGS}


def require_tracking_store(uri: str, store: str, timeout_s: float | None = None, remedy: str = ENV_REMEDY) -> None:
    """Check, writing nothing, that `store` can be read before MLflow opens it: MLflow would create
    a missing SQLite store, create its tables in an empty or foreign file, and retry a dead server
    for minutes. For a server, also bound its calls (bound_http_waits). Raises ModelStoreError."""
    database = sqlite_path(store)
    if database is not None:
        require_sqlite_store(uri, store, database)
    elif store.startswith(("http://", "https://")):
        bound_http_waits(timeout_s)
        try:
            check_tracking_server(store, remedy=remedy)
        except TrackingServerError as exc:
            raise ModelStoreError(str(exc)) from exc


def require_sqlite_store(uri: str, store: str, database: Path) -> None:
    if not database.is_file():
        raise ModelStoreError(
            f"{uri}: no MLflow tracking store {store} ({database.resolve()} does not exist; "
            "set MLFLOW_TRACKING_URI or pass a tracking URI)"
        )
    try:
        check_sqlite_file(database)
        missing = missing_mlflow_tables(database)
    except StoreError as exc:
        raise ModelStoreError(str(exc)) from exc
    if missing:
        raise ModelStoreError(f"MLflow store {database} is an SQLite file without MLflow's tables "
                              f"({', '.join(missing)}): not an MLflow store; set MLFLOW_TRACKING_URI or pass a "
                              "tracking URI")


def missing_mlflow_tables(database: Path) -> list[str]:
    """Which of MLFLOW_TABLES the SQLite file lacks, read-only; StoreError if it cannot be read."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise StoreError(f"MLflow store {database}: {exc}") from exc
    return [table for table in MLFLOW_TABLES if table not in tables]


def store_failure_line(store: str, exc: BaseException) -> str | None:
    """`MLflow store <store>: <cause>` for an MLflow, SQLAlchemy, sqlite3 or requests error, else None.
    Names `store`, the one cxr's client was given, not MLflow's process-wide tracking URI."""
    from pipeline.core.stage import store_failure

    return store_failure(exc, uri=store)


def registered_name(uri: str) -> str | None:
    """The registered model a models:/ URI names (None for runs:/ and other URIs)."""
    match = MODEL_ALIAS_URI.match(uri) or MODEL_VERSION_URI.match(uri)
    return match["name"] if match else None


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model URI's files are, and the registered version and run it resolved to."""

    location: str
    version: str | None
    run_id: str | None


def resolve_model_uri(client, uri: str) -> ResolvedModel:
    """Resolve the URI against this store's registry with an explicit client,
    because MLflow 3.17 resolves models:/ URIs against the process-wide
    registry, ignoring download_artifacts' tracking_uri."""
    if match := MODEL_ALIAS_URI.match(uri):
        registered = client.get_model_version_by_alias(match["name"], match["alias"])
    elif match := MODEL_VERSION_URI.match(uri):
        registered = client.get_model_version(match["name"], match["version"])
    else:
        return ResolvedModel(logged_model_location(client, uri), None, RUN_MODEL_URI.match(uri)["run_id"])
    location = client.get_model_version_download_uri(registered.name, registered.version)
    return ResolvedModel(location, str(registered.version), registered.run_id)


def logged_model_location(client, uri: str) -> str:
    match = RUN_MODEL_URI.match(uri)
    run = client.get_run(match["run_id"])
    logged = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{match['name']}'",
    )
    if not logged:
        raise ModelLoadError(f"{uri}: run {run.info.run_id} logged no model named {match['name']!r}")
    return logged[0].artifact_location


def load_mlflow_model(uri: str, store: str, timeout_s: float | None = None, remedy: str = ENV_REMEDY) -> XrayModel:
    if not any(form.match(uri) for form in (MODEL_ALIAS_URI, MODEL_VERSION_URI, RUN_MODEL_URI)):
        raise ModelLoadError(f"{uri}: not a supported MLflow model URI ({MLFLOW_URI_FORMS})")
    if (registered_name(uri) or "").endswith(LEASE_SUFFIX):
        raise ModelLoadError(f"{uri}: {registered_name(uri)} is the lock held while a champion is decided, "
                             "not a model")
    require_tracking_store(uri, store, timeout_s, remedy)
    disable_telemetry()
    import mlflow
    from mlflow.exceptions import MlflowException

    # Keras reads the whole model into memory, so the download need not outlive it.
    with tempfile.TemporaryDirectory(prefix="cxr-model-") as download_dir:
        resolved, local = download_model(uri, store, Path(download_dir))
        try:
            mlmodel = mlflow.models.Model.load(str(local / "MLmodel"))
            keras_model = registered_keras_model(uri, local, mlmodel.flavors)
        except MlflowException as exc:
            raise ModelLoadError(f"{uri}: {exc.message}") from exc
        metadata = mlmodel.metadata or {}
    model = model_from_registry_metadata(uri, keras_model, metadata)
    model.version, model.run_id = resolved.version, resolved.run_id
    return model


def download_model(uri: str, store: str, download_dir: Path) -> tuple[ResolvedModel, Path]:
    """Resolve the URI and download its files: ModelLoadError when the store has no such model,
    ModelStoreError (one line naming the store) when the store itself fails."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
        resolved = resolve_model_uri(client, uri)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=resolved.location, dst_path=str(download_dir), tracking_uri=store
        )
    except MlflowException as exc:
        if exc.error_code in MODEL_ERROR_CODES:
            raise ModelLoadError(f"{uri}: {exc.message} (tracking store {redacted(store)})") from exc
        raise ModelStoreError(store_failure_line(store, exc)) from exc
    except Exception as exc:
        line = store_failure_line(store, exc)
        if line is None:
            raise
        raise ModelStoreError(line) from exc
    return resolved, Path(local)


def registered_keras_model(uri: str, local: Path, flavors: dict) -> keras.Model:
    """The Keras model inside a downloaded MLflow model: the .keras artifact of
    our pyfunc (pipeline.serve.pyfunc), or a Keras-flavour model (versions
    registered before the pyfunc wrapper)."""
    from pipeline.core.model_io import KERAS_ARTIFACT

    artifact = flavors.get("python_function", {}).get("artifacts", {}).get(KERAS_ARTIFACT)
    if artifact is not None:
        import keras

        return keras.models.load_model(local / artifact["path"], compile=False)
    if "keras" in flavors:
        import mlflow

        return mlflow.keras.load_model(str(local), load_model_kwargs={"compile": False})
    raise ModelLoadError(f"{uri}: neither a chestxray pyfunc nor a Keras model (flavours: {', '.join(flavors)})")


def model_from_registry_metadata(uri: str, keras_model: keras.Model, metadata: dict) -> XrayModel:
    """Check a registered model's model card against this code's conventions."""
    missing = [key for key in ("findings", "thresholds", "preprocessing") if key not in metadata]
    if missing:
        raise ModelLoadError(
            f"{uri}: model metadata lacks {', '.join(missing)} (not registered by the evaluate stage?)"
        )
    if list(metadata["findings"]) != list(FINDINGS):
        raise ModelLoadError(
            f"{uri}: the model's findings {metadata['findings']} differ from "
            f"pipeline.core.labels.FINDINGS {list(FINDINGS)}"
        )
    image_size = int(metadata["preprocessing"]["image_size"])
    if image_size_of(keras_model) != image_size:
        raise ModelLoadError(
            f"{uri}: metadata says image size {image_size}, the model takes {image_size_of(keras_model)}"
        )
    return XrayModel(
        keras_model,
        thresholds=read_thresholds(metadata["thresholds"], f"{uri} metadata"),
        image_size=image_size,
        fit=metadata["preprocessing"].get("fit", DEFAULT_FIT),
        source=uri,
        thresholds_source=f"{uri} metadata",
        recalibration=metadata.get("recalibration"),
    )
