"""Benchmark: our training loop against a bare model.fit, same model and batch.

Real NIH PNGs (../shared/data/nih-subset, else nih-64px) repeated to --images
train records, written as TFRecord shards at --size, then side by side in one
run, steady-state training images/s = batch / the median step time over
the epochs after the first (which traces and compiles):
  (a) bare: model.fit on the decoded images held in memory as NumPy arrays;
  (b) ours: train_model, tf.data reading and decoding the shards, no augmentation;
  (b') ours with train.cache (decoded images kept in memory after epoch 1);
  (c) ours with the default augmentation of params.yaml (for information).
The four take turns for --rounds rounds and each keeps its best round, so a
slow spell of this shared machine does not land on one side only (single
passes of the same comparison gave 0.86x and 1.17x an hour apart).
Same loss (class-weighted BCE), optimizer, AUC metric and batch, timed by the
same callback. A step's time runs from the previous step's end, so input
waits count; the per-epoch work after the last step (our best-model
checkpoint and logging) is a fixed cost per epoch, not per image, and is
printed separately. Target: (b) >= 0.95 x (a). Prints the numbers and writes
them into RESULTS.md (its bench_train section).

    .venv/bin/python benchmarks/bench_train.py [--models small_cnn:128,mobilenetv2:128] [--images 512]
    .venv/bin/python benchmarks/bench_train.py --models densenet121:320 --batch 8 --images 128
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pandas as pd
from common import add_output_arguments, cores, report

from pipeline.core.labels import FINDINGS
from pipeline.data.manifest import MANIFEST_COLUMNS

SHARED = PROJECT_ROOT.parent / "shared" / "data"
SOURCES = (SHARED / "nih-subset" / "images_001" / "images", SHARED / "nih-64px" / "train")
SECTION = "bench_train"
TARGET = 0.95


def source_images() -> list[Path]:
    for folder in SOURCES:
        files = sorted(folder.rglob("*.png"))
        if files:
            return files
    sys.exit(f"bench_train: no real PNGs in {' or '.join(map(str, SOURCES))}")


def train_manifest(files: list[Path], n: int) -> pd.DataFrame:
    """n train rows cycling over files, with a spread of findings so every class has positives."""
    rows = []
    for k in range(n):
        labels = {f: int((k + i) % 7 == 0) for i, f in enumerate(FINDINGS)}
        rows.append({"image_id": f"{k:06d}_000.png", "path": str(files[k % len(files)]), "patient_id": k,
                     "follow_up": 0, "age": 50, "sex": "M", "view": "PA", "finding_labels": "No Finding",
                     **labels, "split": "train"})
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def write_shards(files: list[Path], n: int, size: int, out: Path) -> Path:
    from pipeline.records.preprocess import write_tfrecord_shards

    out.mkdir(parents=True)
    index, _ = write_tfrecord_shards(train_manifest(files, n), out, size, shard_size=max(1, n // 4))
    (out / "index.json").write_text(json.dumps(index))
    return out


def in_memory(shards: Path, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Every train record decoded once: (images float32 0..255, labels)."""
    from pipeline.records.dataset import make_dataset, read_shard_index, shard_files

    records = read_shard_index(shards)["splits"]["train"]["records"]
    images, labels = zip(*make_dataset(shard_files(shards, "train"), batch, records=records).as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels)


class TrainTimer(keras.callbacks.Callback):
    """Per epoch: the duration of each training step (from the previous step's
    end, so whatever runs between steps counts too), and the seconds from the
    last step's end to the epoch's end (validation, checkpoint, logging: this
    callback runs after train_model's own)."""

    def __init__(self):
        super().__init__()
        self.step_seconds: list[list[float]] = []
        self.after_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.step_seconds.append([])
        self.last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.step_seconds[-1].append(now - self.last)
        self.last = now

    def on_epoch_end(self, epoch, logs=None):
        self.after_seconds.append(time.perf_counter() - self.last)

    def rate(self, batch: int) -> float:
        """Images/s from the median step after the first epoch (tracing,
        compilation, warm caches): a robust figure on a noisy machine."""
        return batch / float(np.median([s for epoch in self.step_seconds[1:] for s in epoch]))


def bare_rate(backbone: str, size: int, batch: int, epochs: int, x: np.ndarray, y: np.ndarray,
              pos_weight: np.ndarray) -> float:
    """(a) model.fit on in-memory arrays, compiled as train_model compiles."""
    from pipeline.model.architectures import build_model
    from pipeline.model.train import weighted_binary_crossentropy

    keras.utils.set_random_seed(0)
    model = build_model(backbone, size, "none", batchnorm_momentum=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=weighted_binary_crossentropy(pos_weight),
                  metrics=[keras.metrics.AUC(multi_label=True, num_labels=len(FINDINGS), name="auc")])
    timer = TrainTimer()
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer])
    return timer.rate(batch)


def our_rate(backbone: str, size: int, batch: int, epochs: int, shards: Path, augment: dict | None,
             checkpoint: Path, cache: bool = False) -> tuple[float, float]:
    """(b)/(b')/(c) train_model over the shards: (images/s, mean seconds per epoch after training)."""
    from pipeline.model.architectures import build_model
    from pipeline.model.train import train_model

    keras.utils.set_random_seed(0)
    model = build_model(backbone, size, "none", batchnorm_momentum=0.9)
    timer = TrainTimer()
    settings = {"batch_size": batch, "epochs": epochs, "learning_rate": 1e-3, "lr_schedule": "constant",
                "augment": augment, "cache": cache}
    train_model(model, shards, checkpoint, settings, seed=0, callbacks=[timer])
    return timer.rate(batch), float(np.mean(timer.after_seconds[1:]))


def gpu_note() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return ", CPU only"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f", {len(gpus)} GPU ({details.get('device_name', 'unknown')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small_cnn:128,mobilenetv2:128",
                        help="backbone:size pairs, comma-separated (e.g. densenet121:320)")
    parser.add_argument("--images", type=int, default=512, help="train records per model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="the first is left out of the rates")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of (bare, ours, cached, augmented), each variant's best round kept")
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is left out)")

    import yaml

    from pipeline.model.train import positive_weights
    from pipeline.records.dataset import read_shard_index

    default_augment = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["train"]["augment"]
    files = source_images()
    lines = [f"{'model':<18}{'bare fit':>11}{'ours':>11}{'ours/bare':>10}{'cached':>11}{'cached/bare':>12}"
             f"{'+augment':>11}{'aug/bare':>9}{'epoch end':>11}"]
    worst = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            backbone, size = spec.split(":")[0], int(spec.split(":")[1])
            shards = write_shards(files, args.images, size, Path(tmp) / f"{backbone}-{size}")
            pos_weight = positive_weights(read_shard_index(shards))
            x, y = in_memory(shards, args.batch)
            # The variants take turns, round after round, so a slow spell of this
            # shared machine hits them alike; each keeps its best round.
            rounds: dict[str, list[float]] = {"bare": [], "ours": [], "cached": [], "augmented": [], "end": []}
            for round_ in range(args.rounds):
                rounds["bare"].append(bare_rate(backbone, size, args.batch, args.epochs, x, y, pos_weight))
                ours, epoch_end = our_rate(backbone, size, args.batch, args.epochs, shards, None,
                                           Path(tmp) / f"{backbone}.keras")
                rounds["ours"].append(ours)
                rounds["end"].append(epoch_end)
                rounds["cached"].append(our_rate(backbone, size, args.batch, args.epochs, shards, None,
                                                 Path(tmp) / f"{backbone}-cached.keras", cache=True)[0])
                rounds["augmented"].append(our_rate(backbone, size, args.batch, args.epochs, shards,
                                                    default_augment, Path(tmp) / f"{backbone}-aug.keras")[0])
                print(f"{spec} round {round_ + 1}: " + ", ".join(
                    f"{k} {v[-1]:.1f}{'s' if k == 'end' else '/s'}" for k, v in rounds.items()), flush=True)
            bare, ours, cached, augmented = (max(rounds[k]) for k in ("bare", "ours", "cached", "augmented"))
            epoch_end = float(np.median(rounds["end"]))
            worst = min(worst, ours / bare)
            line = (f"{spec:<18}{bare:>9.1f}/s{ours:>9.1f}/s{ours / bare:>9.2f}x{cached:>9.1f}/s"
                    f"{cached / bare:>11.2f}x{augmented:>9.1f}/s{augmented / bare:>8.2f}x{epoch_end:>10.2f}s")
            lines.append(line)
    verdict = f"target ours >= {TARGET} x bare: {'met' if worst >= TARGET else 'NOT met'} (worst {worst:.2f}x)"
    lines.append(verdict)
    note = (f"{args.images} train records, batch {args.batch}, {args.epochs} epochs (first left out), "
            f"best of {args.rounds} interleaved rounds, {cores()} cores{gpu_note()}; training images/s; "
            f"epoch end = our seconds per epoch after the last batch (best-model checkpoint), not in the rates")
    report(args, SECTION, "Training loop vs bare model.fit", lines, note)


if __name__ == "__main__":
    main()
