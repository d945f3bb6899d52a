"""`cxr` on a tracking store that is broken or does not answer: one stderr
line naming the store, in seconds, and the store's file never written. Real
SQLite files cut from a real registry, real `cxr` processes, and a real HTTP
server on 127.0.0.1; nothing of MLflow is mocked."""
from __future__ import annotations

import hashlib
import http.server
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.tracking import HTTP_MAX_RETRIES
from pipeline.serve.predict import ModelLoadError, ModelStoreError, load_model
from tests.conftest import free_port, write_png
from tests.model.test_predict import CXR, register_test_models
from tests.model.test_tracking_faults import FailingApi, child_env

# The --timeout of the tests against a server; MLflow's own waits would be minutes.
TIMEOUT_S = 5
# Python, cxr's imports and MLflow's: what a run costs before it asks the store anything.
STARTUP_S = 10
# urllib3's waits between attempts (backoff factor 1: 0 s, then 2 s) plus MLflow's jitter of up to 1 s each.
BACKOFF_S = 5


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return register_test_models(tmp_path_factory.mktemp("store-faults"))


@pytest.fixture
def film(tmp_path) -> Path:
    return write_png(tmp_path / "film.png", np.full((64, 64), 128, np.uint8))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cxr(args: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([str(CXR), *args], cwd=cwd, env=child_env(**env), capture_output=True, text=True,
                          timeout=300)
    return done, time.monotonic() - started


def broken_store(kind: str, registry, folder: Path) -> Path:
    """mlruns/mlflow.db under `folder`: empty, the first 100 bytes of a real store, or SQLite without MLflow."""
    database = folder / "mlruns" / "mlflow.db"
    database.parent.mkdir(parents=True)
    real = Path(registry.store.removeprefix("sqlite:///"))
    if kind == "empty":
        database.write_bytes(b"")
    elif kind == "truncated":
        database.write_bytes(real.read_bytes()[:100])
    else:
        with sqlite3.connect(database) as connection:
            connection.execute("CREATE TABLE notes (text TEXT)")
        connection.close()
    return database


@pytest.mark.parametrize("kind,cause", [
    ("empty", "is empty (0 bytes): not an MLflow store"),
    ("truncated", "is malformed (database disk image is malformed)"),
    ("foreign", "is an SQLite file without MLflow's tables (experiments, runs, registered_models, model_versions)"),
])
def test_a_broken_default_store_is_one_line_naming_the_file_and_left_unchanged(registry, film, tmp_path, kind,
                                                                                cause):
    database = broken_store(kind, registry, tmp_path)
    before = digest(database)
    done, _ = run_cxr(["predict", str(film)], cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"cxr: error: MLflow store mlruns/mlflow.db {cause}"), done.stderr
    assert digest(database) == before
    assert sorted(path.name for path in database.parent.iterdir()) == ["mlflow.db"], "journal or lock files left"


def test_the_api_refuses_a_broken_store_without_writing_it(registry, tmp_path):
    database = broken_store("truncated", registry, tmp_path)
    with pytest.raises(ModelStoreError, match=r"mlflow\.db is malformed"):
        load_model("models:/chestxray@champion", tracking_uri=f"sqlite:///{database}")
    assert database.stat().st_size == 100


def test_a_store_of_another_mlflow_schema_is_one_line_and_not_migrated(registry, film, tmp_path):
    database = tmp_path / "old.db"
    database.write_bytes(Path(registry.store.removeprefix("sqlite:///")).read_bytes())
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")  # MLflow 1.0's schema
    connection.close()
    before = digest(database)
    store = f"sqlite:///{database}"
    done, _ = run_cxr(["predict", str(film), "--tracking-uri", store], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"cxr: error: MLflow store {store}: ") and "out-of-date" in done.stderr
    assert digest(database) == before


def test_a_closed_port_named_with_tracking_uri_gets_advice_about_the_option(film, tmp_path):
    """The store came from --tracking-uri, not from the environment: the advice says so."""
    url = f"http://127.0.0.1:{free_port()}"
    done, elapsed = run_cxr(["predict", str(film), "--tracking-uri", url], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"cxr: error: MLflow tracking server {url} is not reachable: "
                                        "[Errno 111] Connection refused; start it or pass another tracking URI"]
    assert elapsed < 10, f"{elapsed:.1f}s"


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_closed_port_is_one_line_in_seconds(film, tmp_path, command):
    url = f"http://127.0.0.1:{free_port()}"
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,labels,patient_id\n{film.name},No Finding,p1\n")
    args = ["predict", str(film)] if command == "predict" else ["evaluate", str(tmp_path), "--labels", str(labels)]
    done, elapsed = run_cxr(args, cwd=tmp_path, MLFLOW_TRACKING_URI=url)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"cxr: error: MLflow tracking server {url} is not reachable: "
                                        "[Errno 111] Connection refused; start it or unset MLFLOW_TRACKING_URI"]
    assert elapsed < 10, f"{elapsed:.1f}s"
    assert not (tmp_path / "reports").exists()


def test_a_server_that_fails_every_api_call_is_one_line_in_bounded_time(film, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        done, elapsed = run_cxr(["predict", str(film), "--timeout", str(TIMEOUT_S)], cwd=tmp_path,
                                MLFLOW_TRACKING_URI=url)
    finally:
        server.shutdown()
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"cxr: error: MLflow store {url}: API request to {url}/api/"), done.stderr
    assert "500" in done.stderr
    assert elapsed < STARTUP_S + 2 * TIMEOUT_S, f"{elapsed:.1f}s"


class SilentApi(http.server.BaseHTTPRequestHandler):
    """A server whose /health answers but whose API calls never do (until `released`)."""

    released = threading.Event()

    def do_GET(self):
        if self.path != "/health":
            self.released.wait(120)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    do_POST = do_GET

    def log_message(self, *args):  # no access log on the test's stderr
        pass


def test_a_server_that_never_answers_the_api_costs_about_the_timeout_per_attempt(film, tmp_path):
    timeout_s = 2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SilentApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        done, elapsed = run_cxr(["predict", str(film), "--timeout", str(timeout_s)], cwd=tmp_path,
                                MLFLOW_TRACKING_URI=url)
    finally:
        SilentApi.released.set()
        server.shutdown()
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"cxr: error: MLflow store {url}: API request to {url}/api/"), done.stderr
    assert f"read timeout={timeout_s}" in done.stderr
    # Each attempt waits timeout_s, with a few seconds of back-off between them: not MLflow's 120 s x 7.
    attempts = HTTP_MAX_RETRIES + 1
    assert elapsed < STARTUP_S + attempts * timeout_s + BACKOFF_S, f"{elapsed:.1f}s"


def test_the_decision_lease_and_an_implicit_latest_version_are_never_served(registry):
    with pytest.raises(ModelLoadError, match="chestxray.decision-lease is the lock held while a champion is decided"):
        load_model("models:/chestxray.decision-lease@champion", tracking_uri=registry.store)
    # No "latest": a version whose registration was killed before its decision is only served by its number.
    with pytest.raises(ModelLoadError, match="not a supported MLflow model URI"):
        load_model("models:/chestxray/latest", tracking_uri=registry.store)
