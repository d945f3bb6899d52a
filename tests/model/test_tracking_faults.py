"""A tracking store that fails, and stages that are killed: one-line errors that
name the store, store files never written when they are not a store, a trained
model kept when the server dies mid-training, versions of killed registrations
marked, and runs ended as KILLED. Real SQLite stores, real `mlflow server`
processes and real signals; nothing of MLflow is mocked."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core.store_lock import StoreError, prepare_sqlite_store
from tests.conftest import PROJECT_ROOT, mlflow_store

TIMEOUT_S = 5


def child_env(**extra: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update({"PYTHONPATH": str(PROJECT_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                "TF_CPP_MIN_LOG_LEVEL": "3"})
    env.pop("PIPELINE_DEBUG", None)
    env.update(extra)
    return env


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> Path:
    """A real MLflow SQLite store, schema and all (its creation takes ~10 s)."""
    database = tmp_path_factory.mktemp("store") / "mlflow.db"
    prepare_sqlite_store(f"sqlite:///{database}")
    return database


def test_an_empty_or_foreign_file_is_refused_unchanged(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match=r"empty\.db is empty \(0 bytes\): not an MLflow store"):
        prepare_sqlite_store(f"sqlite:///{empty}")
    assert empty.read_bytes() == b""
    foreign = tmp_path / "notes.db"
    foreign.write_text("not a database\n")
    with pytest.raises(StoreError, match=r"notes\.db is not an SQLite database \(malformed\)"):
        prepare_sqlite_store(f"sqlite:///{foreign}")
    assert foreign.read_text() == "not a database\n"


def test_a_truncated_store_is_refused_unchanged(real_store, tmp_path):
    truncated = tmp_path / "mlflow.db"
    truncated.write_bytes(real_store.read_bytes()[:100])
    with pytest.raises(StoreError, match=r"mlflow\.db is malformed \(database disk image is malformed\)"):
        prepare_sqlite_store(f"sqlite:///{truncated}")
    assert truncated.stat().st_size == 100 and not Path(f"{truncated}-journal").exists()


def test_a_later_sqlalchemy_failure_becomes_one_line_naming_the_store(real_store, tmp_path):
    import sqlalchemy

    from pipeline.core.stage import store_failure

    truncated = tmp_path / "late.db"
    truncated.write_bytes(real_store.read_bytes()[:100])
    engine = sqlalchemy.create_engine(f"sqlite:///{truncated}")
    with pytest.raises(sqlalchemy.exc.DatabaseError) as caught, engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT * FROM experiments"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{truncated}")
        message = store_failure(caught.value)
    assert message == f"MLflow store sqlite:///{truncated}: (sqlite3.DatabaseError) database disk image is malformed"
    assert store_failure(KeyError("x")) is None
    # A client given its own store (cxr --tracking-uri) names that one, its password hidden.
    named = store_failure(caught.value, uri="http://alice:s3cret@127.0.0.1:5000")
    assert named == ("MLflow store http://alice:***@127.0.0.1:5000: "
                     "(sqlite3.DatabaseError) database disk image is malformed")


def stage_project(folder: Path) -> Path:
    """A directory holding the project's params.yaml with a small model, where a stage script runs."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["train"]["backbone"] = "small_cnn"
    params["preprocess"]["image_size"] = 32
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


@pytest.mark.parametrize("content", ["empty", "truncated"])
def test_the_train_stage_fails_in_one_line_on_a_broken_default_store(real_store, tmp_path, content):
    project = stage_project(tmp_path / "project")
    database = project / "mlruns" / "mlflow.db"
    database.parent.mkdir()
    database.write_bytes(b"" if content == "empty" else real_store.read_bytes()[:100])
    before = digest(database)
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / "train.py")], cwd=project,
                            env=child_env(), capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("train: error:")]
    cause = ("is empty (0 bytes): not an MLflow store" if content == "empty"
             else "is malformed (database disk image is malformed)")
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and f"MLflow store mlruns/mlflow.db {cause}" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert digest(database) == before


KILLED_MID_REGISTRATION = textwrap.dedent("""
    import os, signal, sys
    import mlflow
    from pipeline.core.labels import FINDINGS
    from pipeline.model.architectures import build_model
    from pipeline.model.registry import register_decided, registry_model_metadata

    # The process dies the moment MLflow has registered the version, before its first tag:
    # what `kill -9` of the evaluate stage at that point leaves in the store.
    mlflow.MlflowClient.set_model_version_tag = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    mlflow.set_tracking_uri(sys.argv[1])
    experiment = mlflow.create_experiment("faults", artifact_location=sys.argv[2])
    metadata = registry_model_metadata({f: 0.5 for f in FINDINGS}, {"image_size": 32, "fit": "crop"},
                                       {"mean_auc": 0.7, "auc": {}}, "manifest")
    decision = {"promote": True, "rule": "first version", "reasons": ["first"], "champion_version": None,
                "comparison": None}
    with mlflow.start_run(experiment_id=experiment) as run:
        print(run.info.run_id, flush=True)
        register_decided(mlflow, build_model("small_cnn", 32, "none"), "chestxray", metadata, {}, lambda: decision)
""")


@pytest.mark.slow
def test_a_registration_killed_before_its_decision_is_marked_incomplete_by_the_next(tmp_path):
    from pipeline.core.labels import FINDINGS
    from pipeline.model.architectures import build_model
    from pipeline.model.registry import register_decided, registry_model_metadata

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_sqlite_store(store)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_REGISTRATION, store, (tmp_path / "art").as_uri()],
                            cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    killed_run = killed.stdout.split()[0]
    metadata = registry_model_metadata({f: 0.5 for f in FINDINGS}, {"image_size": 32, "fit": "crop"},
                                       {"mean_auc": 0.6, "auc": {}}, "manifest")
    decision = {"promote": True, "rule": "first version", "reasons": ["first"], "champion_version": None,
                "comparison": None}
    with mlflow_store(store) as mlflow:
        experiment = mlflow.get_experiment_by_name("faults").experiment_id
        with mlflow.start_run(experiment_id=experiment):
            record = register_decided(mlflow, build_model("small_cnn", 32, "none"), "chestxray", metadata, {},
                                      lambda: decision)
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    orphan, new = client.get_model_version("chestxray", "1"), client.get_model_version("chestxray", "2")
    assert record["interrupted"] == [1] and record["version"] == 2
    assert orphan.tags == {"incomplete": f"registration interrupted before its decision (run {killed_run})"}
    assert new.tags["champion_decision"] == "champion" and new.tags["compared_with_champion_version"] == "none"
    assert client.get_registered_model("chestxray").aliases == {"champion": 2, "challenger": 2}


SLEEPING_STAGE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.core.stage import run_stage
    from pipeline.core.tracking import configure_mlflow

    def main(_settings):
        mlflow = configure_mlflow("faults")
        with mlflow.start_run() as run:
            Path(sys.argv[1]).write_text(run.info.run_id)
            time.sleep(120)

    run_stage("probe", main)
""")


def wait_for_run_file(run_file: Path, process: subprocess.Popen) -> str:
    deadline = time.monotonic() + 120
    while not run_file.exists() or not run_file.read_text():
        assert process.poll() is None and time.monotonic() < deadline, "the stage did not start its run"
        time.sleep(0.2)
    return run_file.read_text()


def wait_for_status(store: str, run_id: str, seconds: float) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    deadline = time.monotonic() + seconds
    status = client.get_run(run_id).info.status
    while status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
        status = client.get_run(run_id).info.status
    return status


@pytest.mark.slow
def test_a_stage_whose_parent_is_killed_ends_its_run_as_killed(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_sqlite_store(store)
    run_file = tmp_path / "run_id"
    script = tmp_path / "stage.py"
    script.write_text(SLEEPING_STAGE)
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())  # run_stage reads it
    # `; true` keeps bash as the stage's parent (no exec), like `dvc repro` above its stage
    parent = subprocess.Popen(["bash", "-c", f'"{sys.executable}" "{script}" "{run_file}"; true'], cwd=tmp_path,
                              env=child_env(MLFLOW_TRACKING_URI=store), stderr=subprocess.PIPE, text=True)
    run_id = wait_for_run_file(run_file, parent)
    parent.kill()
    parent.wait()
    assert wait_for_status(store, run_id, seconds=15) == "KILLED"
    stage_lines = parent.stderr.read().splitlines()
    assert f"probe: stopped by SIGTERM; MLflow run {run_id} ended as KILLED" in stage_lines


@pytest.mark.slow
def test_sigint_ends_the_run_as_killed_and_exits_128_plus_the_signal(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_sqlite_store(store)
    run_file = tmp_path / "run_id"
    script = tmp_path / "stage.py"
    script.write_text(SLEEPING_STAGE)
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())  # run_stage reads it
    stage = subprocess.Popen([sys.executable, str(script), str(run_file)], cwd=tmp_path,
                             env=child_env(MLFLOW_TRACKING_URI=store), stderr=subprocess.PIPE, text=True)
    run_id = wait_for_run_file(run_file, stage)
    stage.send_signal(signal.SIGINT)
    assert stage.wait(timeout=30) == 128 + signal.SIGINT
    assert wait_for_status(store, run_id, seconds=5) == "KILLED"
    assert "Traceback" not in stage.stderr.read()


TRAINING_STAGE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline.core.stage import run_stage
    from pipeline.model.train import train_and_track

    from tests.conftest import section_settings

    settings = section_settings("train", backbone="small_cnn", weights="none", epochs=400, batch_size=4,
                                learning_rate=0.001, deterministic=False, mixed_precision=False)
    run_stage("train", lambda _: train_and_track(Path(sys.argv[1]), Path(sys.argv[2]), settings, 32, 0, "faults",
                                               {"seed": 0}, mlflow_timeout_s=float(sys.argv[3])))
""")


@pytest.fixture
def shards(small_nih_root, tmp_path):
    from pipeline.records.preprocess import write_tfrecord_shards
    from tests.conftest import build_manifest

    manifest, _ = build_manifest(small_nih_root, {"method": "random", "train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    out = tmp_path / "tfrecords"
    out.mkdir()
    index, _ = write_tfrecord_shards(manifest, out, image_size=32, shard_size=100)
    (out / "index.json").write_text(json.dumps(index))
    return out


@pytest.mark.slow
def test_a_server_dying_mid_training_keeps_the_best_epoch_and_fails_in_one_line(shards, tmp_path):
    from pipeline.model.train import kept_checkpoint_path
    from tests.e2e.test_mlflow_server import start_server, stop

    url, server = start_server(tmp_path / "server")
    model_file = tmp_path / "models" / "model.keras"
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())  # run_stage reads it
    try:
        stage = subprocess.Popen([sys.executable, "-c", TRAINING_STAGE, str(shards), str(model_file), str(TIMEOUT_S)],
                                 cwd=tmp_path, env=child_env(MLFLOW_TRACKING_URI=url), stderr=subprocess.PIPE,
                                 text=True)
        lines = []
        for line in stage.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("train: epoch 2/"):
                break
        assert any(line.startswith("train: epoch 2/") for line in lines), "\n".join(lines)
    finally:
        stop(server)
    stopped = time.monotonic()
    rest = stage.stderr.read().splitlines()
    returncode = stage.wait(timeout=120)
    elapsed = time.monotonic() - stopped
    errors = [line for line in rest if line.startswith("train: error:")]
    assert returncode == 1, "\n".join(lines + rest)
    assert len(errors) == 1 and f"MLflow store {url} failed during training" in errors[0], "\n".join(rest)
    kept = kept_checkpoint_path(model_file)
    assert f"is kept at {kept} (" in errors[0] and f"and {model_file} is not written" in errors[0]
    assert "Traceback" not in "\n".join(rest)
    assert elapsed < 3 * TIMEOUT_S, f"{elapsed:.1f}s from the server's death to the stage's end"
    assert kept.stat().st_size > 0 and not model_file.exists()


class FailingApi(http.server.BaseHTTPRequestHandler):
    """A server that is up (/health answers 200) but whose every API call fails with 500."""

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 500)
        self.end_headers()
        self.wfile.write(b"OK" if self.path == "/health" else b"internal error")

    do_POST = do_GET

    def log_message(self, *args):  # no access log on the test's stderr
        pass


@pytest.mark.slow
def test_a_server_that_fails_every_api_call_stops_the_stage_in_bounded_time_and_one_line(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    project = stage_project(tmp_path / "project")
    try:
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / "train.py")], cwd=project,
                                env=child_env(MLFLOW_TRACKING_URI=url), capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
    errors = [line for line in result.stderr.splitlines() if line.startswith("train: error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith(f"train: error: MLflow store {url}: API request to {url}/api/"), errors[0]
    assert "500" in errors[0] and "Traceback" not in result.stderr
    # TensorFlow's import and the model's build included; MLflow's default retries took ~4 minutes
    assert elapsed < 90, f"{elapsed:.0f}s"
