"""Multi-worker training for real: two train processes on 127.0.0.1 under
tf.distribute.MultiWorkerMirroredStrategy, the chief through `dvc repro train`,
the other worker through the stage command, as docs/ci-and-scaling.md says;
and, quick, how the shards are split and how a lost worker is reported."""
from __future__ import annotations

import json
import multiprocessing.pool
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf
import yaml

from pipeline.model.distributed import close_failed_reduce_pools, lost_peer_error, tf_config_workers
from pipeline.records.dataset import make_dataset, shard_files, worker_shard_policy
from tests.conftest import free_port
from tests.e2e.project import TINY, make_project, pipeline_env, run

# 60 phantom films at 64 px: 2 train shards (one per worker, split by file)
# and 1 val shard (split by record), one short epoch.
# 60 films of 24 patients leave a split one patient: enough for this test of training (validate.min_split_patients).
TWO_WORKERS = {**TINY, "ingest.phantom.n_images": 60, "preprocess.shard_size": 20, "train.epochs": 1,
               "validate.min_split_patients": 1}
RUN_TIMEOUT_S = 300
# How long the chief may take to notice a killed worker and stop (measured: ~20 s on 2 cores).
LOST_WORKER_BOUND_S = 90
# What the stage writes; the MLflow store lives outside the project, in tmp.
CHIEF_OUTPUTS = {"models/model.keras", "models/mlflow_run.json", "metrics/train.json", "metrics/train_history.csv",
                 "reports/train.json"}
# What `dvc repro train` on the chief adds: the lock and .gitignore beside its outputs.
DVC_FILES = {"dvc.lock", "models/.gitignore", "reports/.gitignore"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project whose tfrecords the real ingest, validate and preprocess stages wrote."""
    project = make_project(tmp_path_factory.mktemp("multi-worker") / "project", TWO_WORKERS)
    run(["dvc", "repro", "preprocess"], project)
    return project


def tf_configs() -> list[str]:
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            for index in range(2)]


def worker_env(tf_config: str, store: str, tmp: Path) -> dict:
    env = pipeline_env()
    env.update({"TF_CONFIG": tf_config, "MLFLOW_TRACKING_URI": store, "TF_CPP_MIN_LOG_LEVEL": "2",
                "TMPDIR": str(tmp)})
    tmp.mkdir(parents=True, exist_ok=True)
    return env


def project_files(project: Path) -> dict[str, int]:
    """Every file of the project outside git's and DVC's own folders, with its mtime."""
    return {str(p.relative_to(project)): p.stat().st_mtime_ns for p in project.rglob("*")
            if p.is_file() and not {".git", ".dvc"} & set(p.relative_to(project).parts)}


def start(command: list[str], project: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=project, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def mlflow_runs(store: str) -> list:
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments]) if experiments else []


@pytest.mark.slow
def test_two_workers_train_once_and_only_the_chief_writes(project, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    chief_config, worker_config = tf_configs()
    before = project_files(project)
    chief = start(["dvc", "repro", "train"], project, worker_env(chief_config, store, tmp_path / "chief-tmp"),
                  tmp_path / "chief.log")
    worker = start([sys.executable, "src/train.py"], project, worker_env(worker_config, store, tmp_path / "worker-tmp"),
                   tmp_path / "worker.log")
    assert finish(worker, RUN_TIMEOUT_S) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert finish(chief, RUN_TIMEOUT_S) == 0, (tmp_path / "chief.log").read_text()[-3000:]
    chief_log, worker_log = (tmp_path / "chief.log").read_text(), (tmp_path / "worker.log").read_text()

    for log in (chief_log, worker_log):
        assert "KerasMultiWorkerStrategy over 2 replica(s)" in log
        assert "train: 2 workers, sharding 2 train shards by file" in log
    # Both workers computed the same epoch (losses and AUCs are all-reduced).
    epoch_line = next(line for line in chief_log.splitlines() if line.startswith("train: epoch 1/1"))
    assert epoch_line.split(")", 1)[1] in worker_log
    assert "the chief writes the outputs" in worker_log

    # The worker wrote nothing: the project changed by the chief's outputs only,
    # and the worker's temporary checkpoint folder is gone.
    after = project_files(project)
    changed = {path for path, mtime in after.items() if before.get(path) != mtime}
    assert CHIEF_OUTPUTS <= changed <= CHIEF_OUTPUTS | DVC_FILES, changed
    assert not list((tmp_path / "worker-tmp").iterdir())

    runs = mlflow_runs(store)
    assert len(runs) == 1
    run_file = json.loads((project / "models" / "mlflow_run.json").read_text())
    assert runs[0].info.run_id == run_file["run_id"] and runs[0].info.status == "FINISHED"
    metrics = json.loads((project / "metrics" / "train.json").read_text())
    assert metrics["best_val_auc"] == round(runs[0].data.metrics["train_best_val_auc"], 4)
    history = (project / "metrics" / "train_history.csv").read_text().splitlines()
    assert len(history) == 2  # the header and the one epoch

    import keras

    model = keras.saving.load_model(project / "models" / "model.keras", compile=False)
    assert model.output_shape[-1] == 14
    assert "train" not in run(["dvc", "status", "train"], project).stdout


@pytest.mark.slow
def test_killed_worker_makes_the_chief_fail_in_one_line_within_bounded_time(project, tmp_path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 50  # still training when the worker is killed
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    model_file = project / "models" / "model.keras"
    model_before = model_file.read_bytes() if model_file.exists() else None
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    chief_config, worker_config = tf_configs()
    chief = start([sys.executable, "src/train.py"], project, worker_env(chief_config, store, tmp_path / "chief-tmp"),
                  tmp_path / "chief.log")
    worker = start([sys.executable, "src/train.py"], project, worker_env(worker_config, store, tmp_path / "worker-tmp"),
                   tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while "train: epoch 1/" not in (tmp_path / "worker.log").read_text():
            assert time.monotonic() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        os.killpg(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        returncode = finish(chief, LOST_WORKER_BOUND_S)
        seconds = time.monotonic() - killed
    finally:
        for process in (chief, worker):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    log = (tmp_path / "chief.log").read_text()
    assert returncode == 1, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("train: error: lost worker 1 during multi-worker training ("), log[-3000:]
    assert "this worker 0 stopped and wrote nothing" in last, log[-3000:]
    print(f"chief stopped {seconds:.1f}s after worker 1 was killed")  # shown with -s
    # The chief's run is FAILED and the stage output is as it was.
    runs = mlflow_runs(store)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert (model_file.read_bytes() if model_file.exists() else None) == model_before
    assert not list(project.glob("models/.model.keras.*")), "the chief's partial checkpoint was left behind"


def image_ids(dataset: tf.data.Dataset) -> list[str]:
    return [image_id.decode() for _, _, ids in dataset.as_numpy_iterator() for image_id in ids]


def test_train_shards_split_by_file_or_by_record(small_nih_root, tmp_path):
    from pipeline.records.preprocess import write_tfrecord_shards
    from tests.conftest import build_manifest

    manifest, _ = build_manifest(small_nih_root, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    out = tmp_path / "tfrecords"
    out.mkdir()
    index, _ = write_tfrecord_shards(manifest, out, image_size=32, shard_size=2)
    (out / "index.json").write_text(json.dumps(index))
    files = shard_files(out, "train")
    assert len(files) >= 2
    everyone = image_ids(make_dataset(files, 4, with_ids=True))
    # By file: each worker reads its own shards; together they read each record once.
    shares = [image_ids(make_dataset(files, 4, with_ids=True, workers=2, worker_index=i)) for i in range(2)]
    assert shares[0] and shares[1] and not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(everyone)
    # Fewer shards than workers: each reads them all, TF's distribution keeps every worker's share of batches.
    one_shard = make_dataset(files[:1], 4, with_ids=True, workers=2, worker_index=1)
    assert one_shard.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    assert image_ids(one_shard) == image_ids(make_dataset(files[:1], 4, with_ids=True))
    assert worker_shard_policy(4, 1) == tf.data.experimental.AutoShardPolicy.OFF


def test_tf_config_counts_the_chief_and_the_workers(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert tf_config_workers() == 3
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not a JSON object"):
        tf_config_workers()


# What TF 2.21 raised on worker 0 when worker 1 was killed (measured), first lines.
HEARTBEAT_LOST = ("Graph execution error:\n\nDetected at node CollectiveReduceV2 defined at (most recent call last):\n"
                  "Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are "
                  "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")


def test_a_lost_worker_is_named_in_one_line():
    error = lost_peer_error(tf.errors.UnavailableError(None, None, HEARTBEAT_LOST), "worker 0")
    message = str(error)
    assert "\n" not in message
    assert message.startswith("lost worker 1 during multi-worker training (UnavailableError: Collective ops is aborted")
    assert "stopped sending heartbeats" in message and message.endswith("restart every worker with the same TF_CONFIG")
    # Not about another worker: left as it is.
    internal = tf.errors.InternalError(None, None, "a kernel failed on /job:worker/task:0")
    assert lost_peer_error(internal, "worker 0") is None
    assert lost_peer_error(ValueError("no"), "worker 0") is None


def test_the_pool_of_a_failed_eager_reduce_is_closed():
    """TF's eager all-reduce opens a ThreadPool and closes it only on success; the
    one a lost peer left running is terminated, so its __del__ at exit cannot
    print a traceback after the one-line error (seen as "OSError: [Errno 9] Bad
    file descriptor" under load)."""
    left_running = []

    def reduce_like_tf():  # cross_device_ops._all_reduce_per_replica_values's shape
        def collective(_):
            raise tf.errors.UnavailableError(None, None, HEARTBEAT_LOST)

        pool = multiprocessing.pool.ThreadPool(1)
        left_running.append(pool)
        outputs = pool.map(collective, [0])
        pool.close()
        return outputs

    try:
        try:
            reduce_like_tf()
        except tf.errors.UnavailableError as cause:
            raise RuntimeError("Keras wrapped it") from cause
    except RuntimeError as exc:
        assert left_running[0]._state == multiprocessing.pool.RUN
        assert close_failed_reduce_pools(exc) == 1
    assert left_running[0]._state == multiprocessing.pool.TERMINATE
