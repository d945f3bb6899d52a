"""Training: a Keras model from the TFRecord shards, class-weighted BCE or focal loss.

The loop: an optional warm-up with the backbone frozen (pretrained weights
only), then the whole model; early stopping on validation mean AUC; the best
epoch checkpointed. It runs unchanged under the tf.distribute strategy that
distribution_strategy() picks (the caller builds the model in its scope and
train_model compiles in it). batch_size is the global batch, split across
replicas.

Reproducibility: seed_everything() seeds Python, NumPy and TF and can turn on
TF's op determinism. Even then a CPU run is not bitwise repeatable across
machines or thread counts (oneDNN kernels and reductions depend on them);
on one machine with the same settings, runs agree to float round-off.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import uses_patient_metadata
from pipeline.core.settings import LOSSES, TrainSettings
from pipeline.core.stage import StageError
from pipeline.model.architectures import set_backbone_trainable
from pipeline.model.distributed import (
    PEER_LOST_ERRORS,
    StopTogether,
    close_failed_reduce_pools,
    is_chief,
    lost_peer_error,
    multi_worker_strategy,
    sharding_line,
    strategy_workers,
    task_name,
    tf_config_workers,
    wait_for_workers,
    worker_checkpoint_path,
    worker_index,
)
from pipeline.records.dataset import make_dataset, read_shard_index, shard_files

# Positive weights are capped so a finding with a handful of positives does
# not dominate the loss.
MAX_POSITIVE_WEIGHT = 50.0


def positive_weights(index: dict, split: str = "train") -> np.ndarray:
    """Per-finding weight for positives, n_negative / n_positive in the split."""
    counts = index["splits"][split]
    total = counts["records"]
    positives = np.array([counts["positives"][f] for f in FINDINGS], dtype=np.float64)
    weights = (total - positives) / np.maximum(positives, 1.0)
    return np.clip(weights, 1.0, MAX_POSITIVE_WEIGHT).astype(np.float32)


def weighted_binary_crossentropy(pos_weight: np.ndarray):
    """BCE where each finding's positive term is scaled by its weight."""
    weight = tf.constant(pos_weight, dtype=tf.float32)

    def loss(y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-7, 1 - 1e-7)
        per_class = -(weight * y_true * tf.math.log(y_pred) + (1 - y_true) * tf.math.log(1 - y_pred))
        return tf.reduce_mean(per_class, axis=-1)

    return loss


def focal_loss(pos_weight: np.ndarray, gamma: float):
    """Binary focal loss (Lin et al. 2017), per finding, averaged over findings:

        -[w * y * (1 - p)^gamma * log(p) + (1 - y) * p^gamma * log(1 - p)]

    w is the finding's positive weight (as for weighted BCE) in the role of the
    paper's alpha, unnormalised, so gamma = 0 gives exactly weighted BCE; gamma
    > 0 scales down the easy examples (mostly the many confident negatives).
    """
    if gamma < 0:
        raise ValueError(f"train.focal_gamma must be >= 0, got {gamma}")
    weight = tf.constant(pos_weight, dtype=tf.float32)

    def loss(y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-7, 1 - 1e-7)
        positive = weight * y_true * tf.pow(1 - y_pred, gamma) * tf.math.log(y_pred)
        negative = (1 - y_true) * tf.pow(y_pred, gamma) * tf.math.log(1 - y_pred)
        return tf.reduce_mean(-(positive + negative), axis=-1)

    return loss


# The figure that chooses the best epoch (and early stopping's): the val split's mean AUC.
MONITOR = "val_auc"


def make_loss(settings: TrainSettings, pos_weight: np.ndarray):
    """train.loss: weighted_bce or focal (with train.focal_gamma)."""
    if settings.loss == "weighted_bce":
        return weighted_binary_crossentropy(pos_weight)
    if settings.loss == "focal":
        return focal_loss(pos_weight, float(settings.focal_gamma))
    raise ValueError(f"train.loss must be one of {', '.join(LOSSES)}, got {settings.loss!r}")


def gpu_count() -> int:
    return len(tf.config.list_physical_devices("GPU"))


def distribution_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers,
    MirroredStrategy when more than one GPU is visible, else the default
    (single-device) strategy. Call it before building the model: the model is
    built and compiled in its scope()."""
    if tf_config_workers() > 1:
        return multi_worker_strategy()
    if gpu_count() > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def resolve_switch(name: str, value) -> bool:
    """auto | true | false for a setting that pays off only on a GPU: auto = on with a GPU."""
    if value in ("auto", None):
        return gpu_count() > 0
    if isinstance(value, bool):
        return value
    raise ValueError(f"train.{name} must be auto, true or false, got {value!r}")


def configure_mixed_precision(setting) -> bool:
    """train.mixed_precision: float16 compute with float32 weights. On a CPU it
    is slower (no float16 units), hence auto = GPU only. Must run before the
    model is built; the head stays float32 (pipeline.model.architectures)."""
    enabled = resolve_switch("mixed_precision", setting)
    keras.mixed_precision.set_global_policy("mixed_float16" if enabled else "float32")
    return enabled


def seed_everything(seed: int, deterministic) -> bool:
    """Seed Python, NumPy and TF; with train.deterministic also TF's op
    determinism (auto = on without a GPU, where it costs little; on a GPU it
    slows some kernels and rejects ops without a deterministic version)."""
    keras.utils.set_random_seed(seed)
    if deterministic in ("auto", None):
        enabled = gpu_count() == 0
    else:
        enabled = resolve_switch("deterministic", deterministic)
    if enabled:
        tf.config.experimental.enable_op_determinism()
    return enabled


def training_phases(epochs: int, warmup_epochs: int, pretrained: bool) -> list[tuple[int, int, bool]]:
    """(first epoch, end epoch, backbone trainable) per fit call: the warm-up
    freezes a pretrained backbone while the new head learns, so its random
    gradients do not wreck the pretrained features; from scratch there is
    nothing to protect and warm-up is skipped."""
    if warmup_epochs < 0:
        raise ValueError(f"train.warmup_epochs must be >= 0, got {warmup_epochs}")
    warmup = min(warmup_epochs, epochs) if pretrained else 0
    phases = [(0, warmup, False)] if warmup else []
    if warmup < epochs:
        phases.append((warmup, epochs, True))
    return phases


def learning_rate_schedule(kind: str, learning_rate: float, total_steps: int):
    """"constant", or "cosine": decay to zero over the run, which settles the
    weights (and the BatchNorm statistics) of short runs in the last epochs."""
    if kind == "constant":
        return learning_rate
    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps))
    raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {kind!r}")


class EpochLogger(keras.callbacks.Callback):
    """One line per epoch and the epoch's metrics to MLflow (when a run is active)."""

    def __init__(self, epochs: int, mlflow_module=None):
        super().__init__()
        self.epochs = epochs
        self.mlflow = mlflow_module
        self.started = 0.0
        # The error of a failed MLflow call: training stops at once (the best
        # epoch so far is already checkpointed) and train_and_track reports it.
        self.tracking_failure: Exception | None = None

    @staticmethod
    def metric_name(key: str) -> str:
        """Keras's per-epoch log key as an MLflow metric: train_auc, train_loss,
        val_auc, val_loss, so that no training figure reads like the test score
        (test_mean_auc, logged by the evaluate stage)."""
        if key.startswith("val_") or key in ("learning_rate", "lr"):
            return key
        return f"train_{key}"

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        seconds = time.monotonic() - self.started
        shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()) if isinstance(v, (int, float)))
        print(f"train: epoch {epoch + 1}/{self.epochs} ({seconds:.0f}s)  {shown}", file=sys.stderr, flush=True)
        if self.mlflow is not None:
            metrics = {self.metric_name(k): float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            metrics["epoch_seconds"] = seconds
            try:
                self.mlflow.log_metrics(metrics, step=epoch + 1)
            except Exception as exc:  # MlflowException, or the HTTP/SQL error under it
                self.tracking_failure = exc
                self.model.stop_training = True


def require_train_and_val(index: dict, tfrecord_dir: Path) -> None:
    """val chooses the best epoch, and evaluate its thresholds: without it a run
    would train for nothing (validate's floor stops this earlier, unless
    preprocess quarantined every film of the split)."""
    for split in ("train", "val"):
        if index["splits"][split]["records"] == 0:
            raise ValueError(f"{tfrecord_dir}: the {split} split has no records ({index.get('quarantined', 0)} "
                             f"film(s) quarantined by preprocess: reports/quarantine.csv); nothing was trained")


def training_datasets(tfrecord_dir: Path, index: dict, settings: TrainSettings, seed: int, metadata: bool,
                      strategy: tf.distribute.Strategy) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The train split (shuffled, augmented) and the val split, each worker's share."""
    train_files = shard_files(tfrecord_dir, "train")
    workers, position = strategy_workers(strategy), worker_index(strategy)
    if workers > 1:
        print(sharding_line("train", len(train_files), workers), file=sys.stderr, flush=True)
    train_data = make_dataset(
        train_files, settings.batch_size, training=True, augmentation=dataclasses.asdict(settings.augment),
        seed=seed, cache=settings.cache, records=index["splits"]["train"]["records"],
        metadata=metadata, workers=workers, worker_index=position,
    )
    val_data = make_dataset(shard_files(tfrecord_dir, "val"), settings.batch_size, cache=True,
                            records=index["splits"]["val"]["records"], metadata=metadata, workers=workers,
                            worker_index=position)
    return train_data, val_data


def compile_phase(model: keras.Model, strategy: tf.distribute.Strategy, settings: TrainSettings, loss,
                  steps: int) -> None:
    """Recompile after (un)freezing: the trainable set is fixed at compile time,
    and each phase gets a fresh optimizer and learning-rate schedule over its `steps`."""
    with strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate_schedule(settings.lr_schedule,
                                                                   float(settings.learning_rate), steps)),
            loss=loss,
            metrics=[keras.metrics.AUC(multi_label=True, num_labels=len(FINDINGS), name="auc")],
        )


def train_model(
    model: keras.Model,
    tfrecord_dir: Path,
    checkpoint_path: Path,
    settings: TrainSettings,
    seed: int,
    mlflow_module=None,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> dict:
    """Fit `model`; the best epoch by validation mean AUC is saved to checkpoint_path.

    `model` must have been built in `strategy`'s scope (default: the current
    strategy); a model with a metadata input is fed the records' patient
    metadata. `callbacks` are added to every fit call, after our own. Returns the history
    and a summary of the run.
    """
    strategy = strategy or tf.distribute.get_strategy()
    index = read_shard_index(tfrecord_dir)
    require_train_and_val(index, tfrecord_dir)
    metadata = uses_patient_metadata(model)
    train_data, val_data = training_datasets(tfrecord_dir, index, settings, seed, metadata, strategy)
    steps_per_epoch = math.ceil(index["splits"]["train"]["records"] / settings.batch_size)
    loss = make_loss(settings, positive_weights(index))
    checkpoint = keras.callbacks.ModelCheckpoint(str(checkpoint_path), monitor=MONITOR, mode="max",
                                                 save_best_only=True)
    logger = EpochLogger(settings.epochs, mlflow_module)
    patience = settings.early_stopping_patience
    stopper = (keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=patience)
               if patience > 0 else None)
    phases = training_phases(settings.epochs, settings.warmup_epochs, settings.pretrained)
    history: dict[str, list[float]] = {}
    trainable_weights = []
    started = time.monotonic()
    for first, end, backbone_trainable in phases:
        trainable_weights.append(set_backbone_trainable(model, backbone_trainable))
        compile_phase(model, strategy, settings, loss, steps_per_epoch * (end - first))
        # Early stopping only in the last phase: stopping in the warm-up would
        # skip fine-tuning altogether. The checkpoint keeps the best of all phases.
        last_phase = end == settings.epochs
        phase_callbacks = [checkpoint, logger, *([stopper] if stopper and last_phase else []), *(callbacks or []),
                           *([StopTogether(strategy)] if strategy_workers(strategy) > 1 else [])]
        with warnings.catch_warnings():
            # Across workers an epoch's length is unknown (make_dataset): Keras
            # warns "Your input ran out of data" at each epoch's normal end.
            warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
            fitted = model.fit(train_data, validation_data=val_data, initial_epoch=first, epochs=end,
                               callbacks=phase_callbacks, verbose=0, shuffle=False)
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        if logger.tracking_failure is not None:
            break
    summary = run_summary(history, settings.epochs, phases, trainable_weights, index, metadata,
                          time.monotonic() - started)
    return {"history": history, "summary": summary, "trainable_weights_per_phase": trainable_weights,
            "tracking_failure": logger.tracking_failure}


def run_summary(history: dict, epochs: int, phases: list, trainable_weights: list[int], index: dict,
                metadata: bool, seconds: float) -> dict:
    """The train stage's summary: epochs run, the best one by val mean AUC, and the cost."""
    monitored = history[MONITOR]
    best = int(np.nanargmax(monitored)) if np.isfinite(monitored).any() else len(monitored) - 1
    return {
        "epochs": len(monitored),
        "stopped_early": len(monitored) < epochs,
        "best_epoch": best + 1,
        "best_val_auc": float(monitored[best]),
        "warmup_epochs": phases[0][1] if not phases[0][2] else 0,
        "trainable_weights": trainable_weights[-1],
        "train_images": int(index["splits"]["train"]["records"]),
        "uses_metadata": metadata,
        "seconds": round(seconds, 1),
        "train_images_per_second": round(index["splits"]["train"]["records"] * len(monitored) / seconds, 2),
    }


def model_in_strategy(settings: TrainSettings, image_size: int, seed: int) -> tuple[tf.distribute.Strategy,
                                                                                     keras.Model]:
    """The distribution strategy (first: MultiWorkerMirroredStrategy must exist
    before other TF ops), seeds and precision set, and the model built in it."""
    from pipeline.model.architectures import build_model

    strategy = distribution_strategy()
    deterministic = seed_everything(seed, settings.deterministic)
    mixed = configure_mixed_precision(settings.mixed_precision)
    print(f"train: {type(strategy).__name__} over {strategy.num_replicas_in_sync} replica(s), "
          f"mixed precision {'on' if mixed else 'off'}, op determinism {'on' if deterministic else 'off'}",
          file=sys.stderr)
    with strategy.scope():
        model = build_model(
            settings.backbone, image_size, str(settings.weights), dropout=float(settings.dropout),
            batchnorm_momentum=settings.batchnorm_momentum, use_metadata=settings.use_metadata,
        )
    return strategy, model


class TrackingLost(StageError):
    """The MLflow store failed mid-training; the message says where the best epoch was kept."""


def train_and_track(
    tfrecord_dir: Path, model_file: Path, settings: TrainSettings, image_size: int, seed: int, experiment: str,
    logged_params: dict, mlflow_timeout_s: float | None = None,
) -> dict:
    """The train stage: build the model named by `settings` (params.yaml's
    train section) in the distribution strategy, fit it in a new MLflow run of
    `experiment` (with `logged_params` flattened as its params), and keep the
    best epoch at model_file (atomically: a failed run leaves the old file).
    When the MLflow store fails mid-training, training stops, the best epoch
    so far is kept beside model_file (kept_checkpoint_path) and TrackingLost
    says so. `mlflow_timeout_s` bounds each MLflow call (params mlflow.timeout_s).
    With several workers (TF_CONFIG) only the chief does all that; the other
    workers train alongside it and write nothing (train_as_worker).
    Returns {"summary", "history", "chief": True, "run": {"run_id", "experiment_id", "tracking_uri"}},
    or on a non-chief worker {"summary", "history", "chief": False}."""
    from pipeline.core.atomic import atomic_path
    from pipeline.core.faults import disk_full_error
    from pipeline.core.tracking import configure_mlflow, data_hash, flatten_params, git_commit, run_name

    strategy, model = model_in_strategy(settings, image_size, seed)
    if not is_chief(strategy):
        return train_as_worker(model, tfrecord_dir, model_file, settings, seed, strategy)
    mlflow = configure_mlflow(experiment, mlflow_timeout_s)
    tags = {"git_commit": git_commit(), "data_hash": data_hash(tfrecord_dir), "backbone": settings.backbone}
    # Not `with start_run()`: a run whose store failed is ended here, quietly,
    # so that the one-line error says what was kept rather than end_run's failure.
    name = run_name(settings.backbone, image_size, (logged_params.get("ingest") or {}).get("source", "unknown"),
                    int(read_shard_index(tfrecord_dir)["splits"]["train"]["records"]), tags["data_hash"])
    run = mlflow.start_run(run_name=name, tags=tags)
    try:
        mlflow.log_params(flatten_params(logged_params))
        with atomic_path(model_file) as checkpoint:
            result = fit_across_workers(model, tfrecord_dir, checkpoint, settings, seed, mlflow, strategy)
            failure = result.pop("tracking_failure")
            if failure is None:
                try:
                    mlflow.log_metrics({f"train_{k}": float(v) for k, v in result["summary"].items()})
                except Exception as exc:  # the store failed after the last epoch
                    failure = exc
            if failure is not None:
                # On a full disk the checkpoint is dropped (atomic_path removes it): it would fill the next run's disk.
                kept = None if disk_full_error(failure) else keep_checkpoint(checkpoint, model_file)
                raise TrackingLost(tracking_lost_message(mlflow.get_tracking_uri(), failure, result["summary"],
                                                         kept, settings, model_file))
    except BaseException:
        end_run_quietly(mlflow, "FAILED")
        raise
    mlflow.end_run()
    result["run"] = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                     "tracking_uri": mlflow.get_tracking_uri()}
    result["chief"] = True
    return result


def train_as_worker(model: keras.Model, tfrecord_dir: Path, model_file: Path, settings: TrainSettings, seed: int,
                    strategy: tf.distribute.Strategy) -> dict:
    """A non-chief worker's share of the train stage: the same steps and saves
    as the chief, no MLflow, and its checkpoints in a temporary folder that is
    deleted at the end. Returns {"summary", "history", "chief": False}: the
    caller writes nothing."""
    with worker_checkpoint_path(model_file) as checkpoint:
        result = fit_across_workers(model, tfrecord_dir, checkpoint, settings, seed, None, strategy)
    result.pop("tracking_failure")
    result["chief"] = False
    return result


def fit_across_workers(model: keras.Model, tfrecord_dir: Path, checkpoint: Path, settings: TrainSettings, seed: int,
                       mlflow_module, strategy: tf.distribute.Strategy) -> dict:
    """train_model; with several workers, first wait until all are ready (the
    chief has opened its MLflow run), and TF's error for a peer that is gone
    becomes one StageError naming it."""
    try:
        if strategy_workers(strategy) > 1:
            wait_for_workers(strategy)
        return train_model(model, tfrecord_dir, checkpoint, settings, seed, mlflow_module, strategy)
    except PEER_LOST_ERRORS as exc:
        lost = lost_peer_error(exc, task_name(strategy)) if strategy_workers(strategy) > 1 else None
        if lost is None:
            raise
        close_failed_reduce_pools(exc)
        raise lost from exc


def kept_checkpoint_path(model_file: Path) -> Path:
    """Where the best epoch of a run whose tracking failed is kept: beside the
    stage's output, never as it (DVC would take a run without its record for a result)."""
    model_file = Path(model_file)
    return model_file.with_name(f"{model_file.stem}.untracked{model_file.suffix}")


def keep_checkpoint(checkpoint: Path, model_file: Path) -> Path:
    kept = kept_checkpoint_path(model_file)
    os.replace(checkpoint, kept)
    os.chmod(kept, 0o644)
    return kept


def tracking_lost_message(uri: str, failure: BaseException, summary: dict, kept: Path | None, settings: TrainSettings,
                          model_file: Path) -> str:
    """One line: which store failed and why (a full disk said as such), what was kept and its size, how to go on."""
    from pipeline.core.faults import disk_full_line, first_line, human_bytes
    from pipeline.core.tracking import redacted

    if kept is None:
        return (f"{disk_full_line(failure, Path(model_file).parent)} (MLflow store {redacted(uri)} could not record "
                f"the run); the best epoch ({summary['best_epoch']} of {summary['epochs']}) was not kept, so as not "
                f"to fill the disk further, and {model_file} is not written; rerun `dvc repro train` once there is "
                f"space")

    cause = first_line(failure)[:300]
    best = next((f"{key.removeprefix('best_')} {value:.4f}" for key, value in summary.items()
                 if key.startswith("best_") and key != "best_epoch"), "")
    return (f"MLflow store {redacted(uri)} failed during training ({cause}); the best epoch so far "
            f"({summary['best_epoch']} of {summary['epochs']} run, {settings.epochs} planned; {best}) is "
            f"kept at {kept} ({human_bytes(kept.stat().st_size)}; delete it when done), and {model_file} is not "
            f"written; fix the store and rerun `dvc repro train` (training starts again)")


def end_run_quietly(mlflow, status: str) -> None:
    """End the active run (if any) with `status`; a store that is gone costs one bounded call, not an error."""
    if mlflow.active_run() is None:
        return
    try:
        mlflow.end_run(status)
    except Exception:  # the failure being reported is the one that matters
        pass
