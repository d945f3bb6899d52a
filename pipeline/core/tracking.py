"""MLflow tracking: where runs go, and what every run is tagged with.

Default store: SQLite at mlruns/mlflow.db with artifacts under mlruns/,
overridden by MLFLOW_TRACKING_URI (e.g. a team's server).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACT_DIR = Path("mlruns/artifacts")
# Seconds to wait for a remote tracking server's /health before giving up.
SERVER_CHECK_TIMEOUT = 5.0
# params.yaml mlflow.timeout_s when absent: the most one MLflow call may wait
# (MLflow's own default, 120 s x 7 retries with back-off, hangs a stage ~4 min).
DEFAULT_TIMEOUT_S = 60
HTTP_MAX_RETRIES = 2
HTTP_BACKOFF_FACTOR = 1
# MLflow 3's UI opens an experiment with this tag in its machine-learning view
# (runs table, charts), not the GenAI view (traces) it infers for an untagged one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class TrackingServerError(RuntimeError):
    """The MLflow tracking server named by MLFLOW_TRACKING_URI does not answer."""


def disable_telemetry() -> None:
    """No network at run time: MLflow's telemetry and GE's analytics off."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def redacted(uri: str) -> str:
    """The URI with any password replaced by ***, for messages and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# What to do about a server that does not answer: it came from the environment,
# or (ARGUMENT_REMEDY) the caller named it, e.g. cxr's --tracking-uri.
ENV_REMEDY = "start it or unset MLFLOW_TRACKING_URI"
ARGUMENT_REMEDY = "start it or pass another tracking URI"


def check_tracking_server(uri: str, timeout: float = SERVER_CHECK_TIMEOUT, remedy: str = ENV_REMEDY) -> None:
    """Raise TrackingServerError when an http(s) tracking server does not answer.

    MLflow's own client retries a dead server with back-off for minutes, and
    only at its first call: checked here, a stage fails in seconds, before it
    trains. Any HTTP answer below 500 counts as up (a proxy may not route
    /health, and a 401 is the server's own answer).
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            return
        reason = f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        reason = str(exc.reason)
    except OSError as exc:  # a timeout while reading the answer
        reason = str(exc) or type(exc).__name__
    raise TrackingServerError(
        f"MLflow tracking server {redacted(uri)} is not reachable: {reason}; {remedy}"
    )


def bound_http_waits(timeout_s: float | None = None) -> None:
    """One failing MLflow HTTP call costs about timeout_s (default: mlflow.timeout_s of the
    working directory's params.yaml, pipeline.core.config.params_timeout_s), not minutes:
    MLflow's request timeout and a couple of quick retries, unless the user set them."""
    from pipeline.core.config import params_timeout_s

    seconds = max(1, round(float(params_timeout_s(DEFAULT_TIMEOUT_S) if timeout_s is None else timeout_s)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(seconds))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_MAX_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(HTTP_BACKOFF_FACTOR))


def configure_mlflow(experiment_name: str, timeout_s: float | None = None):
    """Point MLflow at the store and select (or create) the experiment.

    A SQLite store is checked and its schema created once under a lock
    (pipeline.core.store_lock); HTTP calls wait at most about timeout_s
    (params.yaml mlflow.timeout_s)."""
    from pipeline.core.store_lock import prepare_sqlite_store, sqlite_path

    disable_telemetry()
    bound_http_waits(timeout_s)
    uri = tracking_uri()
    check_tracking_server(uri)
    prepare_sqlite_store(uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment_name) is None:
        artifact_location = None
        database = sqlite_path(uri)
        if database is not None:
            # Beside the database, never under the working directory: a queued
            # DVC experiment runs in a temp copy that is deleted after it.
            artifact_dir = database.parent / "artifacts"  # mlruns/artifacts for the default store
            artifact_dir.mkdir(parents=True, exist_ok=True)
            artifact_location = artifact_dir.resolve().as_uri()
        try:
            mlflow.create_experiment(experiment_name, artifact_location=artifact_location,
                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:
            # a stage running beside this one created it first
            if mlflow.get_experiment_by_name(experiment_name) is None:
                raise
    experiment = mlflow.set_experiment(experiment_name)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # a store made before the tag
        try:
            mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:
            # a stage beside this one set it first (a server's SQL store refuses the second insert)
            if mlflow.get_experiment(experiment.experiment_id).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                raise
    return mlflow


def run_name(backbone: str, image_size: int, data_source: str, train_images: int, data_hash: str) -> str:
    """A run name that says what differs between runs in the runs table:
    "densenet121-320px-phantom-340img-1a2b3c4d"."""
    return f"{backbone}-{image_size}px-{data_source}-{train_images}img-{data_hash[:8]}"


def git_commit() -> str:
    """The project's HEAD commit, with '-dirty' when a tracked file differs from it. DVC's own files do not count:
    dvc.lock and the stages' outputs that it records, which `dvc repro` deletes before a stage runs and rewrites
    after (a stage run from a clean checkout would otherwise always call its commit dirty)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "diff", "--name-only", "--relative", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    managed = dvc_managed_paths(Path("dvc.lock"))
    dirty = [path for path in changed if path and not any(path == m or path.startswith(m + "/") for m in managed)]
    return commit + ("-dirty" if dirty else "")


def dvc_managed_paths(lock: Path) -> set[str]:
    """dvc.lock and every output path it records (relative to the project root, as git names them)."""
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return {lock.name}
    outs = {out["path"].rstrip("/") for stage in stages.values() for out in stage.get("outs") or []}
    return {lock.name, *outs}


def data_hash(tfrecord_dir: Path) -> str:
    """Hash of the shard index, which holds every shard's checksum."""
    index = Path(tfrecord_dir) / "index.json"
    return hashlib.sha256(index.read_bytes()).hexdigest()[:16]


def flatten_params(params: dict, prefix: str = "") -> dict[str, str]:
    """{"train": {"epochs": 3}} -> {"train.epochs": "3"}, for mlflow.log_params."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def metric_name(text: str) -> str:
    """MLflow metric names allow letters, digits and _-. /; NIH names already fit."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)


def log_table(mlflow, frame, artifact_file: str) -> None:
    """mlflow.log_table (the UI shows the artifact as a table), except that a
    table logged again, by a run evaluated again, replaces the old one:
    MLflow's own appends the new rows to it."""
    import posixpath

    run_id = mlflow.active_run().info.run_id
    folder = posixpath.dirname(artifact_file) or None
    if artifact_file in {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, folder)}:
        # the format log_table writes; the run's tag already lists it as a table
        mlflow.log_text(frame.to_json(orient="split", index=False, date_format="iso"), artifact_file)
    else:
        mlflow.log_table(frame, artifact_file)


def resume_run(mlflow, run_file: Path):
    """Continue the training run named in run_file, so one MLflow run holds the
    whole train -> evaluate -> explain story; a new run if that one is gone
    (e.g. mlruns/ was cleared or MLFLOW_TRACKING_URI changed)."""
    run_id = None
    if Path(run_file).is_file():
        run_id = json.loads(Path(run_file).read_text()).get("run_id")
    if run_id:
        try:
            mlflow.get_run(run_id)
            return mlflow.start_run(run_id=run_id)
        except Exception:  # MlflowException when the store has no such run
            pass
    return mlflow.start_run(tags={"note": "training run not found in this tracking store"})


def experiment_page(base_url: str, experiment: str, uri: str | None = None) -> str:
    """The UI page of `experiment` in MLflow 3's machine-learning view (its
    runs table; the sidebar links the model registry). MLflow opens in its
    GenAI view unless the URL or the browser's last choice says otherwise.
    Without a store yet, the experiments list in that view."""
    from pipeline.core.store_lock import sqlite_path

    uri = uri or tracking_uri()
    route = "experiments"
    database = sqlite_path(uri)
    if database is not None and database.is_file():
        disable_telemetry()
        import mlflow

        found = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
        route = f"experiments/{found.experiment_id}" if found else route
    return f"{base_url.rstrip('/')}/#/{route}?workflowType=machine_learning"


if __name__ == "__main__":  # `make mlflow-ui`: where to open the UI
    import sys

    from pipeline.core.settings import load_settings

    try:
        print(f"Open {experiment_page(sys.argv[1], load_settings().mlflow.experiment, DEFAULT_TRACKING_URI)}")
    except Exception as exc:  # a broken store or params.yaml: say so in one line; the UI still starts
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"could not read {DEFAULT_TRACKING_URI} ({reason}); open "
              f"{sys.argv[1].rstrip('/')}/#/experiments?workflowType=machine_learning", file=sys.stderr)
        sys.exit(1)
