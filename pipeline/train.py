"""Training: a Keras model from the TFRecord shards, class-weighted BCE."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.dataset import make_dataset, read_shard_index, shard_files
from pipeline.labels import FINDINGS

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

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        seconds = time.monotonic() - self.started
        shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()) if isinstance(v, (int, float)))
        print(f"train: epoch {epoch + 1}/{self.epochs} ({seconds:.0f}s)  {shown}", file=sys.stderr, flush=True)
        if self.mlflow is not None:
            metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            metrics["epoch_seconds"] = seconds
            self.mlflow.log_metrics(metrics, step=epoch + 1)


def train_model(
    model: keras.Model,
    tfrecord_dir: Path,
    checkpoint_path: Path,
    settings: dict,
    seed: int,
    mlflow_module=None,
) -> dict:
    """Fit `model`; the best epoch by validation mean AUC is saved to checkpoint_path.

    Returns the history and a summary of the run.
    """
    index = read_shard_index(tfrecord_dir)
    train_files = shard_files(tfrecord_dir, "train")
    val_files = shard_files(tfrecord_dir, "val")
    if index["splits"]["train"]["records"] == 0:
        raise ValueError(f"{tfrecord_dir}: the train split has no records")
    batch_size = int(settings["batch_size"])
    epochs = int(settings["epochs"])
    train_data = make_dataset(
        train_files, batch_size, training=True, augmentation=settings.get("augment") or None,
        seed=seed, cache=bool(settings.get("cache", False)), records=index["splits"]["train"]["records"],
    )
    has_val = index["splits"]["val"]["records"] > 0
    val_data = (make_dataset(val_files, batch_size, cache=True, records=index["splits"]["val"]["records"])
                if has_val else None)
    steps_per_epoch = math.ceil(index["splits"]["train"]["records"] / batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate_schedule(settings.get("lr_schedule", "constant"), float(settings["learning_rate"]),
                                   steps_per_epoch * epochs)
        ),
        loss=weighted_binary_crossentropy(positive_weights(index)),
        metrics=[keras.metrics.AUC(multi_label=True, num_labels=len(FINDINGS), name="auc")],
    )
    monitor = "val_auc" if has_val else "auc"
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(checkpoint_path), monitor=monitor, mode="max", save_best_only=True),
        EpochLogger(epochs, mlflow_module),
    ]
    started = time.monotonic()
    history = model.fit(
        train_data, validation_data=val_data, epochs=epochs, callbacks=callbacks, verbose=0, shuffle=False
    )
    seconds = time.monotonic() - started
    monitored = history.history[monitor]
    best = int(np.nanargmax(monitored)) if np.isfinite(monitored).any() else len(monitored) - 1
    return {
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "summary": {
            "epochs": len(monitored),
            "best_epoch": best + 1,
            f"best_{monitor}": float(monitored[best]),
            "train_images": int(index["splits"]["train"]["records"]),
            "seconds": round(seconds, 1),
            "train_images_per_second": round(index["splits"]["train"]["records"] * len(monitored) / seconds, 2),
        },
    }
