"""The pipeline against a real `mlflow server` (MLFLOW_TRACKING_URI=http://...):
the run and the registry land on the server, and a dead server stops the
train stage in seconds, before any epoch, with one clear line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline.core.labels import FINDINGS
from tests.conftest import PROJECT_ROOT, free_port
from tests.e2e.project import copy_project, pipeline_env

pytestmark = pytest.mark.slow

SERVER_START_TIMEOUT = 90.0


def wait_for_health(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited ({server.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer /health in {SERVER_START_TIMEOUT:.0f}s: "
                f"{log.read_text()[-2000:]}")


def stop(server: subprocess.Popen) -> None:
    """The server and its uvicorn and job-runner children: the whole process group."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def start_server(store: Path) -> tuple[str, subprocess.Popen]:
    """`mlflow server` on 127.0.0.1 with its SQLite backend and proxied artifacts
    in `store`, once it answers /health: (url, process); stop it with stop()."""
    store.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = store / "server.log"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=store, env=pipeline_env(), stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log)
    except BaseException:
        stop(process)
        raise
    return url, process


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local tracking server: SQLite backend and proxied artifacts in a temp dir."""
    url, process = start_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield url, process
    finally:
        stop(process)


def run_against(command: list[str], project: Path, uri: str) -> subprocess.CompletedProcess:
    env = {**pipeline_env(), "MLFLOW_TRACKING_URI": uri}
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)


def api(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """GET (or POST with a JSON body) one endpoint of the server's REST API."""
    address = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        address += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(address, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_pipeline_tracks_to_the_server_and_fails_fast_once_it_is_gone(server, tmp_path, prepared_tiny):
    url, process = server
    project = copy_project(prepared_tiny, tmp_path / "project")  # its data stages already ran
    result = run_against(["dvc", "repro"], project, url)
    assert result.returncode == 0, result.stdout + result.stderr

    run_file = json.loads((project / "models" / "mlflow_run.json").read_text())
    assert run_file["tracking_uri"] == url
    experiment = api(url, "experiments/get-by-name", experiment_name="chestxray")["experiment"]
    runs = api(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert [r["info"]["run_id"] for r in runs] == [run_file["run_id"]]
    metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
    assert any(f"test_auc_{finding}" in metrics for finding in FINDINGS), sorted(metrics)
    assert "test_mean_auc" in metrics

    model = api(url, "registered-models/get", name="chestxray")["registered_model"]
    assert {"alias": "champion", "version": "1"} in model["aliases"]
    version = api(url, "model-versions/get", name="chestxray", version="1")["model_version"]
    assert version["run_id"] == run_file["run_id"]
    champion = api(url, "registered-models/alias", name="chestxray", alias="champion")["model_version"]
    assert champion["version"] == "1"
    assert not (project / "mlruns" / "mlflow.db").exists(), "the run went to the local store, not the server"

    stop(process)
    started = time.monotonic()
    dead = run_against(["dvc", "repro", "--single-item", "--force", "train"], project, url)
    elapsed = time.monotonic() - started
    output = dead.stdout + dead.stderr
    assert dead.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("train: error:")]
    expected = (f"train: error: MLflow tracking server {url} is not reachable: [Errno 111] Connection "
                "refused; start it or unset MLFLOW_TRACKING_URI")
    assert errors == [expected], output
    assert "train: epoch" not in output and "Traceback" not in output
    assert elapsed < 90, f"train took {elapsed:.0f}s to notice the dead server"


def test_make_mlflow_ui_listens_on_localhost_only():
    """The local UI reads the project's store; it is not a team server."""
    dry_run = subprocess.run(["make", "-n", "mlflow-ui"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             check=True).stdout
    ui = next(line for line in dry_run.splitlines() if line.startswith("mlflow ui"))
    assert "--host 127.0.0.1" in ui
    # it first prints where to open it: the experiment in the machine-learning view (tests/e2e/test_mlflow_ui.py)
    assert "python -m pipeline.core.tracking http://127.0.0.1:5000" in dry_run
