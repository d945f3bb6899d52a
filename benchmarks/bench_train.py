"""Benchmark: our training loop against a bare model.fit, same model and batch: step times.

Real NIH PNGs (../shared/data/nih-subset, else nih-64px, labelled) repeated
to --images train records per model, written as TFRecord shards at the
model's size, then side by side, the variants taking turns for --rounds
rounds (order rotated each round), each a fresh model trained --epochs
epochs:
  bare: model.fit on the decoded images held in memory as NumPy arrays;
  ours: train_model, tf.data reading and decoding the shards, no augmentation;
  ours + augment: train_model with params.yaml's default augmentation
      (--augment-models only: it matters where a step is short).
Same loss (class-weighted BCE), optimizer, AUC metric and batch, timed by the
same callback. A step's time runs from the previous step's end, so input
stalls count. The first --skip steps of each run are left out (tracing,
compilation, warm caches). Steps within an epoch give mean, median, p90 and
max (a median hides input stalls) and the throughput, batch / mean step
time. The first step of each later epoch (iterator restart, shuffle buffer
refill) is a fixed cost per epoch, not per image: with this benchmark's few
steps an epoch it would weigh a hundred times more than on NIH's ~10,000
steps an epoch, so it is printed apart (and the ratio with it counted), as
is the per-epoch work after the last step (our best-model checkpoint,
logging). Target: ours >= 0.95 x bare on the mean step within an epoch, for
every model.

    .venv/bin/python benchmarks/bench_train.py [--models densenet121:320:32,small_cnn:320:64] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from common import (
    PROJECT_ROOT,
    SHARED_DATA,
    add_output_arguments,
    contention_line,
    describe,
    interleaved,
    report,
    summary,
)

from pipeline.core.labels import FINDINGS

SOURCES = ((SHARED_DATA / "nih-subset" / "images_001" / "images", "real NIH 1024px PNGs"),
           (SHARED_DATA / "nih-64px" / "train", "real NIH PNGs downscaled to 64px (FALLBACK: nih-subset absent)"))
SECTION = "bench_train"
TARGET = 0.95


def source_images() -> tuple[list[Path], str]:
    for folder, label in SOURCES:
        files = sorted(folder.rglob("*.png"))
        if files:
            return files, label
    sys.exit(f"bench_train: no real PNGs in {' or '.join(str(f) for f, _ in SOURCES)}")


def train_manifest(files: list[Path], n: int):
    """n train rows cycling over files, with a spread of findings so every class has positives."""
    import pandas as pd

    from pipeline.data.manifest import MANIFEST_COLUMNS

    rows = []
    for k in range(n):
        labels = {f: int((k + i) % 7 == 0) for i, f in enumerate(FINDINGS)}
        rows.append({"image_id": f"{k:06d}_000.png", "path": str(files[k % len(files)]), "patient_id": k,
                     "follow_up": 0, "age": 50, "sex": "M", "view": "PA", "finding_labels": "No Finding",
                     **labels, "split": "train"})
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def write_shards(files: list[Path], n: int, size: int, out: Path) -> Path:
    import contextlib
    import io

    from pipeline.records.preprocess import write_tfrecord_shards

    out.mkdir(parents=True)
    with contextlib.redirect_stderr(io.StringIO()):  # the stage's progress lines
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
    """Every training step's duration, from the previous step's end (from the
    epoch's start for an epoch's first step), so whatever runs between steps
    counts; and the seconds from each epoch's last step to its end
    (validation, checkpoint, logging: this callback runs after train_model's own)."""

    def __init__(self):
        super().__init__()
        self.step_seconds: list[float] = []
        self.step_names: list[str] = []
        self.epoch_first: list[bool] = []  # the first step of an epoch after the first
        self.after_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.step_seconds.append(now - self.last)
        self.step_names.append(f"epoch {self.epoch + 1} step {batch + 1}")
        self.epoch_first.append(self.epoch > 0 and batch == 0)
        self.last = now

    def on_epoch_end(self, epoch, logs=None):
        self.after_seconds.append(time.perf_counter() - self.last)


def steady_steps(timer: TrainTimer, skip: int) -> list[tuple[float, str]]:
    """(seconds, where) of the steps within an epoch: not the run's first `skip`, not a later epoch's first."""
    return [(s, where) for i, (s, where, first) in enumerate(zip(timer.step_seconds, timer.step_names,
                                                                   timer.epoch_first))
            if i >= skip and not first]


def epoch_start_steps(timer: TrainTimer, skip: int) -> list[float]:
    """Seconds of each later epoch's first step (iterator restart, shuffle buffer refill)."""
    return [s for i, (s, first) in enumerate(zip(timer.step_seconds, timer.epoch_first)) if i >= skip and first]


def bare_run(backbone: str, size: int, batch: int, epochs: int, x: np.ndarray, y: np.ndarray,
             pos_weight: np.ndarray) -> TrainTimer:
    """model.fit on in-memory arrays, compiled as train_model compiles."""
    from pipeline.model.architectures import build_model
    from pipeline.model.train import weighted_binary_crossentropy

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build_model(backbone, size, "none", batchnorm_momentum=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=weighted_binary_crossentropy(pos_weight),
                  metrics=[keras.metrics.AUC(multi_label=True, num_labels=len(FINDINGS), name="auc")])
    timer = TrainTimer()
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer])
    return timer


def our_run(backbone: str, size: int, batch: int, epochs: int, shards: Path, augment: dict | None,
            checkpoint: Path) -> TrainTimer:
    """train_model over the shards."""
    from pipeline.model.architectures import build_model
    from pipeline.model.train import train_model

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build_model(backbone, size, "none", batchnorm_momentum=0.9)
    timer = TrainTimer()
    from pipeline.core.settings import load_settings, with_overrides

    off = {"rotation": 0, "zoom": 0, "shift": 0, "hflip": False, "brightness": 0, "contrast": 0}
    settings = with_overrides(load_settings(PROJECT_ROOT / "params.yaml"), **{
        "train.batch_size": batch, "train.epochs": epochs, "train.learning_rate": 1e-3,
        "train.lr_schedule": "constant", "train.augment": {**off, **(augment or {})}, "train.cache": False}).train
    train_model(model, shards, checkpoint, settings, seed=0, callbacks=[timer])
    return timer


def model_variants(backbone: str, size: int, args, shards: Path, x: np.ndarray, y: np.ndarray,
                   pos_weight: np.ndarray, augment: dict | None, tmp: Path) -> dict:
    """The runs that take turns for one model: bare, ours (and ours + augment when `augment`)."""
    variants = {
        "bare": lambda: bare_run(backbone, size, args.batch, args.epochs, x, y, pos_weight),
        "ours": lambda: our_run(backbone, size, args.batch, args.epochs, shards, None, tmp / f"{backbone}.keras"),
    }
    if augment:
        variants["ours + augment"] = lambda: our_run(backbone, size, args.batch, args.epochs, shards, augment,
                                                     tmp / f"{backbone}-aug.keras")
    return variants


def gpu_note() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU only"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"{len(gpus)} GPU ({details.get('device_name', 'unknown')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="densenet121:320:32,small_cnn:320:64",
                        help="backbone:size:train-records triples, comma-separated")
    parser.add_argument("--augment-models", default="small_cnn",
                        help="backbones that also run ours + default augmentation (comma-separated; '' for none)")
    parser.add_argument("--batch", type=int, default=8, help="as params.yaml train.batch_size")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip", type=int, default=2, help="first steps of each run left out (tracing)")
    parser.add_argument("--rounds", type=int, default=2)
    add_output_arguments(parser)
    args = parser.parse_args()

    import yaml

    from pipeline.model.train import positive_weights
    from pipeline.records.dataset import read_shard_index

    default_augment = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["train"]["augment"]
    augment_models = {m for m in args.augment_models.split(",") if m}
    files, source = source_images()
    lines = [f"{source}; batch {args.batch}; {args.epochs} epochs per run, first {args.skip} steps of each run "
             f"left out; {args.rounds} interleaved rounds; {gpu_note()}; step times in ms"]
    worst = float("inf")
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        for spec in args.models.split(","):
            backbone, size, images = spec.split(":")[0], int(spec.split(":")[1]), int(spec.split(":")[2])
            shards = write_shards(files, images, size, Path(tmp) / f"{backbone}-{size}")
            pos_weight = positive_weights(read_shard_index(shards))
            x, y = in_memory(shards, args.batch)
            variants = model_variants(backbone, size, args, shards, x, y, pos_weight,
                                      default_augment if backbone in augment_models else None, Path(tmp))
            busy: dict[str, list[float]] = {}
            timers = interleaved(variants, args.rounds, log=f"{SECTION} {backbone}:{size}", contention=busy)
            within = {name: [steady_steps(t, args.skip) for t in runs] for name, runs in timers.items()}
            starts = {name: [s for t in runs for s in epoch_start_steps(t, args.skip)] for name, runs in timers.items()}
            flat = {name: [s for run in runs for s, _ in run] for name, runs in within.items()}
            slowest = {name: max((s, f"round {r + 1} {where}") for r, run in enumerate(runs) for s, where in run)[1]
                       for name, runs in within.items()}
            mean = {name: summary(values)["mean"] for name, values in flat.items()}
            p90 = {name: summary(values)["p90"] for name, values in flat.items()}
            ratio = mean["bare"] / mean["ours"]
            worst = min(worst, ratio)
            per_round = ", ".join(f"{np.mean([s for s, _ in b]) / np.mean([s for s, _ in o]):.2f}"
                                  for b, o in zip(within["bare"], within["ours"]))
            with_starts = {name: float(np.mean(flat[name] + starts[name])) for name in flat}
            epoch_end = [s for t in timers["ours"] for s in t.after_seconds]
            steps_per_epoch = -(-images // args.batch)
            lines += [
                f"{backbone} at {size}px, {images} train records ({steps_per_epoch} steps an epoch); steps within "
                f"an epoch:",
                *[f"  {name:<15} {describe(values)} -> {args.batch / mean[name]:.2f} images/s "
                  f"(max at {slowest[name]})" for name, values in flat.items()],
                f"  ours / bare, images/s from the mean step: {ratio:.2f} x (per round {per_round}); "
                f"p90 step bare / ours: {p90['bare'] / p90['ours']:.2f} x",
                *([f"  ours + augment / bare: {mean['bare'] / mean['ours + augment']:.2f} x"]
                  if "ours + augment" in mean else []),
                "  first step of each later epoch (a fixed cost per epoch): " + "; ".join(
                    f"{name} {describe(values)}" for name, values in starts.items() if values),
                f"  ours / bare with those counted, at this benchmark's {steps_per_epoch} steps an epoch: "
                f"{with_starts['bare'] / with_starts['ours']:.2f} x",
                f"  ours' epoch end (best-model checkpoint, logging), not in the step times: "
                f"{describe(epoch_end, unit='s', scale=1, digits=2)}",
                f"  {contention_line(busy)}",
            ]
    lines.append(f"target ours >= {TARGET} x bare (mean step within an epoch), every model: "
                 f"{'meets' if worst >= TARGET else 'MISSES'} (worst {worst:.2f} x)")
    report(args, SECTION, "bench_train: our training loop against a bare model.fit (step times)", lines)


if __name__ == "__main__":
    main()
