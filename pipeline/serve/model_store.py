"""Models from an MLflow store: the store checked before MLflow opens it
(a missing, empty or damaged SQLite file, or a server that does not answer,
is one line in seconds), models:/ and runs:/ URIs resolved to a version and
run, and the registered model with its metadata loaded as an XrayModel."""
from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.store_lock import LEASE_SUFFIX, StoreError, check_sqlite_file, sqlite_path
from pipeline.core.tracking import (
    ENV_REMEDY,
    TrackingServerError,
    bound_http_waits,
    check_tracking_server,
    disable_telemetry,
    redacted,
)
from pipeline.serve.xray_model import ModelLoadError, ModelStoreError, XrayModel, model_from_registry_metadata

if TYPE_CHECKING:
    import keras

MODEL_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
MODEL_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
RUN_MODEL_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<name>[^/]+)$")
MLFLOW_SCHEMES = ("models:", "runs:")
MLFLOW_URI_FORMS = "models:/name@alias, models:/name/version or runs:/run_id/model"
# Tables every MLflow SQLite store has; without them MLflow would create them in whatever file it is given.
MLFLOW_TABLES = ("experiments", "runs", "registered_models", "model_versions")
# MLflow errors that are about the model asked for (no such alias, version or run), not about the store.
MODEL_ERROR_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


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
        reference = registered_reference(local, mlmodel.flavors)
    model = model_from_registry_metadata(uri, keras_model, metadata)
    model.version, model.run_id, model.reference = resolved.version, resolved.run_id, reference
    return model


@contextlib.contextmanager
def store_failures(uri: str, store: str):
    """What fails inside, as one line: ModelLoadError when the store has no such
    model (alias, version, run), ModelStoreError naming the store when the store itself fails."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code in MODEL_ERROR_CODES:
            raise ModelLoadError(f"{uri}: {exc.message} (tracking store {redacted(store)})") from exc
        raise ModelStoreError(store_failure_line(store, exc)) from exc
    except Exception as exc:
        line = store_failure_line(store, exc)
        if line is None:
            raise
        raise ModelStoreError(line) from exc


def download_model(uri: str, store: str, download_dir: Path) -> tuple[ResolvedModel, Path]:
    """Resolve the URI and download its files (failures as store_failures says)."""
    import mlflow

    with store_failures(uri, store):
        client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
        resolved = resolve_model_uri(client, uri)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=resolved.location, dst_path=str(download_dir), tracking_uri=store
        )
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


def registered_reference(local: Path, flavors: dict) -> dict | None:
    """The reference profile among a downloaded pyfunc's artifacts (None for a
    version registered without one); its format is pipeline.monitor.reference's to check."""
    from pipeline.core.model_io import REFERENCE_ARTIFACT

    artifact = flavors.get("python_function", {}).get("artifacts", {}).get(REFERENCE_ARTIFACT)
    if artifact is None:
        return None
    try:
        return json.loads((local / artifact["path"]).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{local}: cannot read the reference profile: {exc}") from exc
