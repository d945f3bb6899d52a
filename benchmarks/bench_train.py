"""Benchmark: our training loop against a bare model.fit, same model and batch.

Real NIH PNGs (../shared/data/nih-subset, else nih-64px) repeated to --images
train records, written as TFRecord shards at --size, then side by side in one
run, steady-state images/s (the first epoch, which traces and compiles, is
left out):
  (a) bare: model.fit on the decoded images held in memory as NumPy arrays;
  (b) ours: train_model, tf.data reading and decoding the shards, no augmentation;
  (c) ours with the default augmentation of params.yaml (for information).
Same loss (class-weighted BCE), optimizer, AUC metric and batch. Target:
(b) >= 0.95 x (a). Prints the numbers and writes them into RESULTS.md (its
bench_train section).

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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common import cores, results_body, update_results  # noqa: E402
from pipeline.labels import FINDINGS  # noqa: E402
from pipeline.manifest import MANIFEST_COLUMNS  # noqa: E402

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
    from pipeline.preprocess import write_tfrecord_shards

    out.mkdir(parents=True)
    index, _ = write_tfrecord_shards(train_manifest(files, n), out, size, shard_size=max(1, n // 4))
    (out / "index.json").write_text(json.dumps(index))
    return out


def in_memory(shards: Path, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Every train record decoded once: (images float32 0..255, labels)."""
    from pipeline.dataset import make_dataset, read_shard_index, shard_files

    records = read_shard_index(shards)["splits"]["train"]["records"]
    images, labels = zip(*make_dataset(shard_files(shards, "train"), batch, records=records).as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels)


class EpochTimes:
    """Stands in for MLflow in train_model: EpochLogger reports epoch_seconds to it."""

    def __init__(self):
        self.seconds: list[float] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.seconds.append(metrics["epoch_seconds"])


def steady_rate(epoch_seconds: list[float], images: int) -> float:
    """Images/s over the epochs after the first (tracing, compilation, warm caches)."""
    return images * len(epoch_seconds[1:]) / sum(epoch_seconds[1:])


def bare_rate(backbone: str, size: int, batch: int, epochs: int, x: np.ndarray, y: np.ndarray,
              pos_weight: np.ndarray) -> float:
    """(a) model.fit on in-memory arrays, compiled as train_model compiles."""
    import keras

    from pipeline.models import build_model
    from pipeline.train import weighted_binary_crossentropy

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.monotonic() - self.started)

    keras.utils.set_random_seed(0)
    model = build_model(backbone, size, "none", batchnorm_momentum=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=weighted_binary_crossentropy(pos_weight),
                  metrics=[keras.metrics.AUC(multi_label=True, num_labels=len(FINDINGS), name="auc")])
    timer = Timer()
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer])
    return steady_rate(timer.seconds, len(x))


def our_rate(backbone: str, size: int, batch: int, epochs: int, shards: Path, augment: dict | None,
             images: int, checkpoint: Path) -> float:
    """(b)/(c) train_model over the shards."""
    import keras

    from pipeline.models import build_model
    from pipeline.train import train_model

    keras.utils.set_random_seed(0)
    model = build_model(backbone, size, "none", batchnorm_momentum=0.9)
    times = EpochTimes()
    settings = {"batch_size": batch, "epochs": epochs, "learning_rate": 1e-3, "lr_schedule": "constant",
                "augment": augment}
    train_model(model, shards, checkpoint, settings, seed=0, mlflow_module=times)
    return steady_rate(times.seconds, images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small_cnn:128,mobilenetv2:128",
                        help="backbone:size pairs, comma-separated (e.g. densenet121:320)")
    parser.add_argument("--images", type=int, default=512, help="train records per model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="the first is left out of the rates")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is left out)")

    import yaml

    from pipeline.dataset import read_shard_index
    from pipeline.train import positive_weights

    default_augment = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["train"]["augment"]
    files = source_images()
    lines = [f"{'model':<18}{'bare fit':>12}{'ours':>12}{'ours/bare':>11}{'ours+augment':>14}{'aug/bare':>10}"]
    worst = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            backbone, size = spec.split(":")[0], int(spec.split(":")[1])
            shards = write_shards(files, args.images, size, Path(tmp) / f"{backbone}-{size}")
            pos_weight = positive_weights(read_shard_index(shards))
            x, y = in_memory(shards, args.batch)
            bare = bare_rate(backbone, size, args.batch, args.epochs, x, y, pos_weight)
            ours = our_rate(backbone, size, args.batch, args.epochs, shards, None, len(x),
                            Path(tmp) / f"{backbone}.keras")
            augmented = our_rate(backbone, size, args.batch, args.epochs, shards, default_augment, len(x),
                                 Path(tmp) / f"{backbone}-aug.keras")
            worst = min(worst, ours / bare)
            line = (f"{spec:<18}{bare:>10.1f}/s{ours:>10.1f}/s{ours / bare:>10.2f}x"
                    f"{augmented:>12.1f}/s{augmented / bare:>9.2f}x")
            print(line, flush=True)
            lines.append(line)
    verdict = f"target ours >= {TARGET} x bare: {'met' if worst >= TARGET else 'NOT met'} (worst {worst:.2f}x)"
    print(verdict)
    lines.append(verdict)
    if not args.no_write:
        command = "benchmarks/bench_train.py " + " ".join(sys.argv[1:])
        note = (f"{args.images} train records, batch {args.batch}, {args.epochs} epochs (first left out), "
                f"{cores()} cores; images/s")
        update_results(SECTION, results_body("Training loop vs bare model.fit", command.strip(), lines, note))


if __name__ == "__main__":
    main()
