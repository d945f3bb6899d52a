"""Benchmark: preprocess and the tf.data input pipeline on real NIH 1024px PNGs.

The 300 real PNGs of ../shared/data/nih-subset, repeated to --images rows,
measured side by side in one run:
  (a) the limit: decode + 320px area resize alone, one process, x workers;
  (b) a naive baseline: a Python loop with PIL writing one TFRecord;
  (c) our preprocess (write_tfrecord_shards) with --workers processes, in a
      child process, with its peak RSS at --small and at --images rows;
  (d) tf.data read throughput over (c)'s shards with the default train
      augmentation, next to a DenseNet121 training step's consumption.
Targets: (c) >= 0.8 x (a) and >= 3 x (b); (c)'s peak RSS flat when the input
grows 10x; (d) >= 1,000 images/s. Prints the numbers and writes them into
RESULTS.md (its bench_preprocess section).

    .venv/bin/python benchmarks/bench_preprocess.py [--images 3000] [--small 300]
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd
from common import add_output_arguments, cores, report, timed

from pipeline.core.labels import FINDINGS
from pipeline.data.manifest import MANIFEST_COLUMNS

IMAGES = PROJECT_ROOT.parent / "shared" / "data" / "nih-subset" / "images_001" / "images"
SECTION = "bench_preprocess"
NIH_IMAGES = 112_120
SIZE = 320


def repeated_manifest(files: list[Path], n: int) -> pd.DataFrame:
    """n manifest rows cycling over files; splits 70/15/15 as the default config."""
    rows = []
    for k in range(n):
        split = "train" if k % 20 < 14 else ("val" if k % 20 < 17 else "test")
        labels = {f: int((k + i) % 9 == 0) for i, f in enumerate(FINDINGS)}
        rows.append({"image_id": f"{k:06d}_000.png", "path": str(files[k % len(files)]), "patient_id": k,
                     "follow_up": 0, "age": 50, "sex": "M", "view": "PA", "finding_labels": "No Finding",
                     **labels, "split": split})
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def limit_rate(files: list[Path]) -> float:
    """(a) decode + resize, images/s on one core."""
    import cv2

    from pipeline.records.imaging import decode_to_gray8, resize_square

    cv2.setNumThreads(1)

    def run():
        for path in files:
            resize_square(decode_to_gray8(path.read_bytes(), str(path)), SIZE)

    run()  # page cache warm, as for the others
    return len(files) / timed(run)[1]


def naive_rate(files: list[Path], n: int, out: Path) -> float:
    """(b) the loop people write first: PIL, one TFRecord, one process."""
    import tensorflow as tf
    from PIL import Image

    def run():
        with tf.io.TFRecordWriter(str(out)) as writer:
            for k in range(n):
                image = Image.open(files[k % len(files)]).convert("L").resize((SIZE, SIZE))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buffer.getvalue()])),
                    "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=[0] * len(FINDINGS))),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())

    return n / timed(run)[1]


def child_preprocess(manifest_csv: str, out: str, workers: int) -> None:
    """(c), in a child process; prints its throughput as JSON."""
    out = Path(out)
    from pipeline.data.manifest import read_manifest
    from pipeline.records.preprocess import write_tfrecord_shards

    importlib.import_module("pipeline.records.tfrecords")  # TensorFlow (~4 s to import): start-up, not throughput

    manifest = read_manifest(manifest_csv)
    out.mkdir()
    (index, quarantine), seconds = timed(write_tfrecord_shards, manifest, out, SIZE, shard_size=3000,
                                         workers=workers)
    (out / "index.json").write_text(json.dumps(index))
    print(json.dumps({"images": len(manifest), "seconds": seconds, "quarantined": len(quarantine),
                      "bytes": sum((out / s["file"]).stat().st_size for s in index["shards"])}))


def ours(manifest: pd.DataFrame, out: Path, workers: int) -> dict:
    """Run (c) in a child process; its peak RSS is sampled over the whole
    process tree (the stage and its workers together) every 20 ms."""
    import psutil

    csv = out.with_suffix(".csv")
    manifest.to_csv(csv, index=False)
    # python -c, not this file: spawned workers re-import the main script, and
    # the stage's own main (src/preprocess.py) is tiny.
    code = (f"import sys; sys.path[:0] = [{str(PROJECT_ROOT)!r}, {str(Path(__file__).parent)!r}]; "
            f"from bench_preprocess import child_preprocess; "
            f"child_preprocess({str(csv)!r}, {str(out)!r}, {workers})")
    process = subprocess.Popen([sys.executable, "-c", code],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_total = peak_parent = 0
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            sizes = [p.memory_info().rss for p in tree]
            peak_total, peak_parent = max(peak_total, sum(sizes)), max(peak_parent, sizes[0])
        except psutil.Error:
            pass
        time.sleep(0.02)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        sys.exit(f"bench_preprocess: preprocess failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "rss_total_mb": peak_total / 2**20, "rss_parent_mb": peak_parent / 2**20}


def input_rate(tfrecord_dir: Path, batch_size: int, seconds: float = 10.0) -> float:
    """(d) images/s out of make_dataset with the default train augmentation,
    in steady state: after 100 batches (tf.data's autotuning), over `seconds`."""
    import yaml

    from pipeline.records.dataset import make_dataset, shard_files

    augment = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["train"]["augment"]
    dataset = make_dataset(shard_files(tfrecord_dir, "train"), batch_size, training=True,
                           augmentation=augment, seed=0).repeat()
    batches = iter(dataset)
    for _ in range(100):
        next(batches)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += int(next(batches)[0].shape[0])
    rate = count / (time.perf_counter() - start)
    del batches  # stop tf.data's threads before the interpreter exits
    return rate


def densenet_train_rate(batch_size: int, steps: int = 4) -> float:
    """Images/s a DenseNet121 training step consumes at 320px on this machine."""
    import keras
    import numpy as np

    from pipeline.model.architectures import build_model

    model = build_model("densenet121", SIZE, weights="none")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, SIZE, SIZE, 1)).astype("float32")
    y = np.zeros((batch_size, len(FINDINGS)), "float32")
    for _ in range(2):
        model.train_on_batch(x, y)
    seconds = timed(lambda: [model.train_on_batch(x, y) for _ in range(steps)])[1]
    keras.backend.clear_session()
    return batch_size * steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="rows for (c) and (d) (default 3000)")
    parser.add_argument("--small", type=int, default=300, help="rows for the RSS comparison (default 300)")
    parser.add_argument("--naive", type=int, default=600, help="rows for the naive loop (default 600)")
    parser.add_argument("--workers", type=int, default=cores())
    parser.add_argument("--batch-size", type=int, default=8, help="as params.yaml train.batch_size")
    add_output_arguments(parser)
    args = parser.parse_args()
    files = sorted(IMAGES.glob("*.png"))
    if not files:
        sys.exit(f"bench_preprocess: no PNGs in {IMAGES} (the real NIH subset lives in ../shared)")

    with tempfile.TemporaryDirectory(prefix="bench_preprocess.") as tmp:
        tmp = Path(tmp)
        per_core = limit_rate(files)
        limit = per_core * args.workers
        naive = naive_rate(files, args.naive, tmp / "naive.tfrecord")
        small = ours(repeated_manifest(files, args.small), tmp / "small", args.workers)
        large = ours(repeated_manifest(files, args.images), tmp / "large", args.workers)
        rate = large["images"] / large["seconds"]
        read = {b: input_rate(tmp / "large", b) for b in sorted({args.batch_size, 32})}
        train = densenet_train_rate(args.batch_size)

    growth = args.images / args.small
    rss = {k: (small[k], large[k]) for k in ("rss_parent_mb", "rss_total_mb")}
    flat = all(b <= 1.15 * a + 20 for a, b in rss.values())
    checks = {
        "(c) >= 0.8 x (a)": rate >= 0.8 * limit,
        "(c) >= 3 x (b)": rate >= 3 * naive,
        f"(c) peak RSS flat at {growth:.0f}x input (within 15% + 20 MB)": flat,
        "(d) >= 1,000 images/s": min(read.values()) >= 1000,
    }
    lines = [
        f"input: {len(files)} real NIH 1024x1024 PNGs repeated to {args.images} rows; {args.workers} workers; "
        f"{SIZE}px PNG records",
        f"(a) limit, decode + resize only: {per_core:.1f} images/s per core x {args.workers} = {limit:.1f} images/s",
        f"(b) naive PIL loop, one TFRecord ({args.naive} images): {naive:.1f} images/s",
        f"(c) our preprocess ({args.images} images): {rate:.1f} images/s = {rate / limit:.2f} x (a), "
        f"{rate / naive:.2f} x (b); {large['bytes'] / large['images'] / 1024:.1f} KB per record",
        f"    peak RSS at {args.small} -> {args.images} images: stage process {rss['rss_parent_mb'][0]:.0f} -> "
        f"{rss['rss_parent_mb'][1]:.0f} MB, with its {args.workers} workers {rss['rss_total_mb'][0]:.0f} -> "
        f"{rss['rss_total_mb'][1]:.0f} MB",
        f"    all {NIH_IMAGES:,} NIH images at this rate: {NIH_IMAGES / rate / 60:.0f} min "
        f"(naive loop: {NIH_IMAGES / naive / 60:.0f} min)",
        *[f"(d) tf.data read + decode + default augmentation, batch {b}: {r:.0f} images/s" for b, r in read.items()],
        f"    a DenseNet121 training step at {SIZE}px, batch {args.batch_size}, consumes {train:.1f} images/s: "
        f"the input pipeline is {read[args.batch_size] / train:.0f} x faster",
        *[f"target {name}: {'meets' if ok else 'MISSES'}" for name, ok in checks.items()],
    ]
    report(args, SECTION, "bench_preprocess: preprocess and the input pipeline on real NIH PNGs", lines)


if __name__ == "__main__":
    main()
