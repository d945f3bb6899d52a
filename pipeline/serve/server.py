"""`cxr serve`: a registered version behind MLflow's own model server.

    cxr serve [--model models:/chestxray@champion] [--port 5001] [--host 127.0.0.1] [--workers 1]

The alias is resolved to its version first (a server keeps the model it
loaded, so it says which), then `mlflow models serve` runs in this
environment (--env-manager local: nothing is installed, nothing fetched) on
127.0.0.1 unless --host says otherwise. What it takes and answers:
pipeline.serve.pyfunc, docs/predict.md#model-server.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.core.tracking import disable_telemetry

DEFAULT_PORT = 5001  # beside the MLflow UI's 5000
DEFAULT_HOST = "127.0.0.1"


def served_uri(uri: str, store: str, timeout_s: float | None) -> tuple[str, str | None]:
    """The models:/name/version a models:/ alias URI resolves to (other URIs as
    they are), and the version; ModelLoadError or ModelStoreError in one line."""
    import mlflow

    from pipeline.serve.model_store import (
        MLFLOW_SCHEMES,
        registered_name,
        require_tracking_store,
        resolve_model_uri,
        store_failures,
    )

    if not uri.startswith(MLFLOW_SCHEMES):
        return uri, None  # a local model folder
    require_tracking_store(uri, store, timeout_s)
    with store_failures(uri, store):
        resolved = resolve_model_uri(mlflow.MlflowClient(tracking_uri=store, registry_uri=store), uri)
    if resolved.version is None:
        return uri, None
    return f"models:/{registered_name(uri)}/{resolved.version}", resolved.version


def takes_films(uri: str, store: str) -> bool:
    """Whether the model's signature takes film bytes (a binary `image` column):
    versions registered before the model server took films take tensors only."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.set_tracking_uri(store)
        signature = mlflow.models.get_model_info(uri).signature
    except (MlflowException, OSError):
        return True  # not knowable here; the server will say what it cannot load
    inputs = signature.inputs if signature is not None else None
    return inputs is not None and any(getattr(spec, "name", None) == "image" and repr(spec.type) == "binary"
                                      for spec in inputs.inputs)


def serve_command_line(uri: str, host: str, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "--model-uri", uri, "--env-manager", "local",
            "--host", host, "--port", str(port), "--workers", str(workers)]


def serving_environment(store: str) -> dict[str, str]:
    """This environment, the store for models:/ URIs, no telemetry, and this
    interpreter's folder first on PATH (MLflow starts `uvicorn` by name)."""
    disable_telemetry()
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}


def serve(uri: str, store: str, host: str, port: int, workers: int, timeout_s: float | None) -> None:
    """Resolve, say what is served where, and become MLflow's model server (never returns)."""
    concrete, version = served_uri(uri, store, timeout_s)
    which = f"{uri} = version {version}" if version and concrete != uri else concrete
    print(f"cxr serve: {which} on http://{host}:{port}/invocations (films as base64 in dataframe_split JSON; "
          "docs/predict.md#model-server); Ctrl-C stops it", file=sys.stderr, flush=True)
    if not takes_films(concrete, store):
        print(f"cxr serve: note: {concrete} was registered before the model server took films: it takes "
              "preprocessed tensors only ({\"inputs\": {\"image\": ...}}); `dvc repro --force evaluate` registers "
              "the model again as a version that takes films", file=sys.stderr, flush=True)
    command = serve_command_line(concrete, host, port, workers)
    os.execve(command[0], command, serving_environment(store))
