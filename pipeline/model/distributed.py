"""Training on several machines with TensorFlow's own engine, tf.distribute.MultiWorkerMirroredStrategy.

Every worker runs the same train stage with its own TF_CONFIG; the workers
step in lock-step (each gradient is all-reduced across them), so every worker
must run the same number of steps and epochs and make the same collective
calls. Side effects are the chief's alone: the chief (task type "chief", or
worker 0 when the cluster has no "chief" job) tracks the run in MLflow and
writes the model, the metrics and the run file; the other workers save their
checkpoints too (saving may read variables that need every worker, TF's
pattern for multi-worker Keras saving) but into a temporary folder that is
deleted at the end, so they write nothing into the project.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing.pool
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

from pipeline.core.faults import exception_chain
from pipeline.core.stage import StageError
from pipeline.records.dataset import worker_shard_policy

# The most one training collective (an all-reduce of gradients or metrics)
# waits for the other workers: the last resort when a peer is gone, as TF
# usually notices sooner (a reset connection at once, missed heartbeats in
# ~10-20 s). Workers run those steps in lock-step, so a live peer is never
# that far behind.
COLLECTIVE_TIMEOUT_S = 60
# The waits that absorb the chief's own work, its MLflow calls (up to
# mlflow.timeout_s each, with retries) and its checkpoint: at the start
# (wait_for_workers) and at each epoch's end (StopTogether).
CHIEF_WAIT_TIMEOUT_S = 600
# TF's error kinds when a peer is gone: refused/reset connection, missed
# heartbeats, the collective's timeout, or the collective aborted by the other
# side's failure; the last two kinds count only when they name another task.
PEER_GONE_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                    tf.errors.AbortedError)
PEER_LOST_ERRORS = (*PEER_GONE_ERRORS, tf.errors.InternalError, tf.errors.FailedPreconditionError)
CAUSE_WORDS = re.compile(r"unhealthy|heartbeat|unavailable|connect|socket|deadline|timed? ?out|abort", re.IGNORECASE)


def tf_config() -> dict:
    """TF_CONFIG as a dict ({} when unset)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"TF_CONFIG is not a JSON object with cluster.worker: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("cluster", {}), dict):
        raise ValueError("TF_CONFIG is not a JSON object with cluster.worker")
    return config


def tf_config_workers() -> int:
    """The number of training tasks TF_CONFIG's cluster names, chief included (0 when unset)."""
    cluster = tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy with a reduce() that Keras 3's fit() can call.

    Keras 3.15's TF trainer (keras/src/backend/tensorflow/trainer.py) calls
    reduce() in two ways TF's multi-worker reduce rejects (keras-team/keras#20585,
    open): on the whole first (images, labels) batch at once ("Attempt to convert
    a value (PerReplica...)", _maybe_symbolic_build), and with axis=0 on each
    step's scalar loss and metrics ("Invalid reduction dimension 0 for input
    with 0 dimensions", reduce_per_replica). Here a nest is reduced one tensor
    at a time, and a scalar over the replicas alone (axis None), which is
    what both callers mean."""

    def reduce(self, reduce_op, value, axis):
        parent = super()

        def reduce_one(leaf):
            local = self.experimental_local_results(leaf)[0]
            scalar = getattr(local, "shape", None) is not None and local.shape.rank == 0
            return parent.reduce(reduce_op, leaf, None if scalar else axis)

        return tf.nest.map_structure(reduce_one, value)


def multi_worker_strategy(timeout_s: float = COLLECTIVE_TIMEOUT_S) -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy for TF_CONFIG's cluster; its creation waits until every worker has started."""
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=float(timeout_s))
    return KerasMultiWorkerStrategy(communication_options=options)


def strategy_workers(strategy: tf.distribute.Strategy) -> int:
    """How many workers (machines) `strategy` spans: 1 unless multi-worker."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        spec = strategy.cluster_resolver.cluster_spec()
        return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)
    return 1


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This worker's place among strategy_workers(strategy): the chief job first, then the workers."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0
    resolver = strategy.cluster_resolver
    has_chief = "chief" in resolver.cluster_spec().jobs
    return resolver.task_id + (1 if has_chief and resolver.task_type == "worker" else 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this worker writes the stage's outputs (always, outside multi-worker training)."""
    return strategy.extended.should_checkpoint


def sharding_line(split: str, files: int, workers: int) -> str:
    """What the log says about how `split`'s shards are split across the workers."""
    how = "by file" if worker_shard_policy(files, workers) == tf.data.experimental.AutoShardPolicy.FILE else "by record"
    return f"train: {workers} workers, sharding {files} {split} shards {how}"


@contextlib.contextmanager
def worker_checkpoint_path(model_file: Path) -> Iterator[Path]:
    """A non-chief's checkpoint: a file in a fresh temporary folder outside the
    project, deleted (folder and all) when the block ends, however it ends."""
    folder = Path(tempfile.mkdtemp(prefix="train-worker-"))
    try:
        yield folder / Path(model_file).name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sum_over_workers(strategy: tf.distribute.Strategy, value: float, timeout_s: float) -> float:
    """`value` summed over every worker (one collective on the host), waiting at most timeout_s for them.

    Run as a graph: TF's eager reduce runs it on a thread pool that it leaves
    open when the collective fails, and that pool's clean-up prints a
    traceback at exit after the stage's one-line error."""
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=float(timeout_s))
    host = strategy.extended.worker_devices[0]

    @tf.function
    def total(local):
        return strategy.extended.reduce_to(tf.distribute.ReduceOp.SUM, local, destinations=host, options=options)

    return float(strategy.experimental_local_results(total(tf.constant(float(value))))[0])


def wait_for_workers(strategy: tf.distribute.Strategy) -> None:
    """Return once every worker has reached this call: the chief after opening
    its MLflow run, the others straight after building the model."""
    sum_over_workers(strategy, 1.0, CHIEF_WAIT_TIMEOUT_S)


class StopTogether(keras.callbacks.Callback):
    """Ends training on every worker when any one stops (early stopping, a lost
    MLflow store on the chief): a worker that kept going would wait in its
    next all-reduce for peers that have left. Goes after every callback that
    may set stop_training."""

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch, logs=None):
        votes = sum_over_workers(self.strategy, 1.0 if self.model.stop_training else 0.0, CHIEF_WAIT_TIMEOUT_S)
        self.model.stop_training = votes > 0


def task_name(strategy: tf.distribute.Strategy) -> str:
    """This process's task in the cluster, e.g. "worker 1"."""
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type} {resolver.task_id}"


def lost_peer_error(exc: BaseException, this_task: str) -> StageError | None:
    """A one-line StageError for a TF error that means a peer worker is gone,
    naming it ("worker 1"); None for any other error. `this_task` is
    task_name(strategy), left out of the peers named."""
    if not isinstance(exc, PEER_LOST_ERRORS):
        return None
    text = str(exc)
    peers = sorted({f"{job} {index}" for job, index in re.findall(r"/job:(\w+)(?:/replica:\d+)?/task:(\d+)", text)}
                   - {this_task})
    if not peers and not isinstance(exc, PEER_GONE_ERRORS):
        return None  # an internal error that names no other worker is not about one
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # TF's first line is often just "Graph execution error:"; the cause is the line that names it.
    cause = next((line for line in lines if CAUSE_WORDS.search(line)), lines[0] if lines else "")
    return StageError(f"lost {' and '.join(peers) or 'another worker'} during multi-worker training "
                      f"({type(exc).__name__}: {cause[:200]}); this {this_task} stopped and wrote nothing: "
                      "restart every worker with the same TF_CONFIG")


def close_failed_reduce_pools(exc: BaseException) -> int:
    """Terminate the thread pools that TF's eager all-reduce left running when
    its collective failed; how many.

    cross_device_ops._all_reduce_per_replica_values opens a ThreadPool for each
    eager reduce and closes it only when the reduce succeeds. The failed one
    lives on in the traceback's frames, and its __del__ at interpreter exit
    writes to pipes already closed: an "OSError: [Errno 9] Bad file
    descriptor" traceback after the stage's one-line error."""
    closed = 0
    for link in exception_chain(exc):
        traceback = link.__traceback__
        while traceback is not None:
            for value in list(traceback.tb_frame.f_locals.values()):
                if isinstance(value, multiprocessing.pool.Pool) and value._state == multiprocessing.pool.RUN:
                    value.terminate()
                    closed += 1
            traceback = traceback.tb_next
    return closed
