"""Benchmark: preprocess and the tf.data input pipeline on real NIH 1024px PNGs.

--images of the real PNGs in ../shared/data/nih-subset (the stage's own
work: decode, square, 320px area resize, PNG encode, TFRecord), measured
side by side, the variants taking turns for --rounds rounds (order rotated
each round):
  (a)  the limit: decode + resize alone (OpenCV), one process;
  (b1) the naive loop: Python + PIL writing one TFRecord, one process;
  (c1) our preprocess (write_tfrecord_shards) with 1 worker (in-process);
  (b2) the naive loop equally parallel: a multiprocessing Pool of --workers
       processes, each doing (b1)'s per-image work on its share of the images
       and writing its own TFRecord (the pool started and TensorFlow imported
       before the clock starts);
  (c2) our preprocess with --workers worker processes (its pool start-up
       inside the clock).
Per core: (c1) against (b1), and (c2) / workers against (b1). Equally
parallel: (c2) against (b2). Then, once: (c2)'s peak RSS (stage process and
workers, in a child process) at --small and at --large rows (the PNGs
repeated), and tf.data read throughput over the --large shards with the
default train augmentation, with its per-batch wait times.
Targets: (c2) >= 0.8 x (a) x workers; (c1) >= 2 x (b1) per core and (c2) >=
2 x (b2) equally parallel; peak RSS flat when the input grows; tf.data >=
1,000 images/s.

    .venv/bin/python benchmarks/bench_preprocess.py [--images 150] [--rounds 3] [--small 300] [--large 1200]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Light on purpose: spawned worker processes re-import this module.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import (
    PROJECT_ROOT,
    add_output_arguments,
    contention_line,
    cores,
    describe,
    describe_rates,
    interleaved,
    nih_pngs,
    report,
    summary,
    timed,
)

SECTION = "bench_preprocess"
NIH_IMAGES = 112_120
SIZE = 320
FINDINGS_COUNT = 14


# ------------------------------------------------------------- the naive loop

def naive_example(path: str) -> bytes:
    """(b)'s work for one image: PIL decode, grey, resize, PNG encode, tf.train.Example."""
    import tensorflow as tf
    from PIL import Image

    image = Image.open(path).convert("L").resize((SIZE, SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buffer.getvalue()])),
        "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=[0] * FINDINGS_COUNT)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def naive_loop(paths: list[str], out: str) -> list[float]:
    """(b1), and each worker of (b2): one TFRecord; seconds per image."""
    import tensorflow as tf

    seconds = []
    with tf.io.TFRecordWriter(out) as writer:
        for path in paths:
            start = time.perf_counter()
            writer.write(naive_example(path))
            seconds.append(time.perf_counter() - start)
    return seconds


def naive_worker_init(barrier) -> None:
    import tensorflow  # noqa: F401  (start-up, not throughput)

    barrier.wait()


def naive_ready(_: int) -> None:
    return None


# ---------------------------------------------------------------- the others

def limit_loop(paths: list[str]) -> list[float]:
    """(a): decode + resize only, one process; seconds per image."""
    from pipeline.records.imaging import decode_to_gray8, resize_square

    seconds = []
    for path in paths:
        start = time.perf_counter()
        resize_square(decode_to_gray8(Path(path).read_bytes(), path), SIZE)
        seconds.append(time.perf_counter() - start)
    return seconds


def manifest_rows(files: list[Path], n: int):
    """n manifest rows cycling over files; splits 70/15/15 as the default config."""
    import pandas as pd

    from pipeline.core.labels import FINDINGS
    from pipeline.data.manifest import MANIFEST_COLUMNS

    rows = []
    for k in range(n):
        split = "train" if k % 20 < 14 else ("val" if k % 20 < 17 else "test")
        labels = {f: int((k + i) % 9 == 0) for i, f in enumerate(FINDINGS)}
        rows.append({"image_id": f"{k:06d}_000.png", "path": str(files[k % len(files)]), "patient_id": k,
                     "follow_up": 0, "age": 50, "sex": "M", "view": "PA", "finding_labels": "No Finding",
                     **labels, "split": split})
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def ours(manifest, out: Path, workers: int) -> dict:
    """(c1)/(c2), in this process: the stage's write_tfrecord_shards."""
    from pipeline.records.preprocess import write_tfrecord_shards

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    with contextlib.redirect_stderr(io.StringIO()):  # the stage's progress lines: not this benchmark's output
        (index, quarantine), seconds = timed(write_tfrecord_shards, manifest, out, SIZE, shard_size=3000,
                                             workers=workers)
    (out / "index.json").write_text(json.dumps(index))
    return {"images": len(manifest), "seconds": seconds, "quarantined": len(quarantine),
            "bytes": sum((out / s["file"]).stat().st_size for s in index["shards"])}


def child_preprocess(manifest_csv: str, out: str, workers: int) -> None:
    """The stage in a child process (for its peak RSS); prints its result as JSON."""
    import importlib

    from pipeline.data.manifest import read_manifest

    importlib.import_module("pipeline.records.tfrecords")  # TensorFlow: start-up, not throughput
    print(json.dumps(ours(read_manifest(manifest_csv), Path(out), workers)))


def ours_in_child(manifest, out: Path, workers: int) -> dict:
    """Run the stage in a child process; its peak RSS is sampled over the
    whole process tree (the stage and its workers) every 20 ms."""
    import psutil

    csv = out.with_suffix(".csv")
    manifest.to_csv(csv, index=False)
    code = (f"import sys; sys.path[:0] = [{str(PROJECT_ROOT)!r}, {str(Path(__file__).parent)!r}]; "
            f"from bench_preprocess import child_preprocess; "
            f"child_preprocess({str(csv)!r}, {str(out)!r}, {workers})")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        sys.exit(f"bench_preprocess: preprocess in a child process failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "rss_total_mb": peak_total / 2**20, "rss_parent_mb": peak_parent / 2**20}


def input_waits(tfrecord_dir: Path, batch_size: int, seconds: float) -> list[float]:
    """tf.data with the default train augmentation: seconds waited per batch,
    over `seconds` after 50 warm-up batches (tf.data's autotuning)."""
    import yaml

    from pipeline.records.dataset import make_dataset, shard_files

    augment = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["train"]["augment"]
    dataset = make_dataset(shard_files(tfrecord_dir, "train"), batch_size, training=True,
                           augmentation=augment, seed=0).repeat()
    batches = iter(dataset)
    for _ in range(50):
        next(batches)
    waits, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        next(batches)
        waits.append(time.perf_counter() - began)
    del batches  # stop tf.data's threads before the interpreter exits
    return waits


def rate(seconds_per_image: list[float]) -> float:
    return len(seconds_per_image) / sum(seconds_per_image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150, help="images per variant per round (default 150)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=cores())
    parser.add_argument("--small", type=int, default=300, help="rows for the smaller RSS run (default 300)")
    parser.add_argument("--large", type=int, default=1200, help="rows for the larger RSS run and tf.data")
    parser.add_argument("--read-seconds", type=float, default=5.0, help="tf.data timing per batch size")
    parser.add_argument("--batch-size", type=int, default=8, help="as params.yaml train.batch_size")
    add_output_arguments(parser)
    args = parser.parse_args()
    import multiprocessing

    files = nih_pngs()
    if not files:
        sys.exit(f"bench_preprocess: no real NIH PNGs under {PROJECT_ROOT.parent / 'shared'} (this benchmark "
                 f"needs them; no synthetic fallback: decoding cost depends on the real images)")
    paths = [str(files[k % len(files)]) for k in range(args.images)]
    manifest = manifest_rows(files, args.images)
    workers = args.workers
    shares = [paths[w::workers] for w in range(workers)]
    busy: dict[str, list[float]] = {}
    import tensorflow  # noqa: F401  (start-up, not throughput, for (b1) and (c1))

    with tempfile.TemporaryDirectory(prefix="bench_preprocess.") as tmp:
        tmp = Path(tmp)
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(workers)
        with context.Pool(workers, initializer=naive_worker_init, initargs=(barrier,)) as pool:
            pool.map(naive_ready, range(workers), chunksize=1)  # every worker has imported TensorFlow

            def naive_parallel() -> float:
                jobs = [(share, str(tmp / f"naive-{w}.tfrecord")) for w, share in enumerate(shares)]
                _, seconds = timed(pool.starmap, naive_loop, jobs, 1)
                return args.images / seconds

            limit_loop(paths[:10])  # page cache and lazy imports, as for the others
            naive_loop(paths[:10], str(tmp / "warm.tfrecord"))
            variants = {
                "limit": lambda: limit_loop(paths),
                "naive1": lambda: naive_loop(paths, str(tmp / "naive.tfrecord")),
                "ours1": lambda: ours(manifest, tmp / "ours1", 1),
                "naiveW": naive_parallel,
                "oursW": lambda: ours(manifest, tmp / "oursW", workers),
            }
            rounds = interleaved(variants, args.rounds, log=SECTION, contention=busy)
        small = ours_in_child(manifest_rows(files, args.small), tmp / "small", workers)
        large = ours_in_child(manifest_rows(files, args.large), tmp / "large", workers)
        waits = {b: input_waits(tmp / "large", b, args.read_seconds) for b in sorted({args.batch_size, 32})}

    limit_rates = [rate(r) for r in rounds["limit"]]
    naive1_rates = [rate(r) for r in rounds["naive1"]]
    ours1_rates = [r["images"] / r["seconds"] for r in rounds["ours1"]]
    oursW_rates = [r["images"] / r["seconds"] for r in rounds["oursW"]]
    naiveW_rates = rounds["naiveW"]
    mean = {name: summary(values)["mean"] for name, values in
            (("limit", limit_rates), ("naive1", naive1_rates), ("ours1", ours1_rates), ("oursW", oursW_rates),
             ("naiveW", naiveW_rates))}

    def per_round(a: list[float], b: list[float], scale: float = 1.0) -> str:
        return ", ".join(f"{x / scale / y:.2f}" for x, y in zip(a, b))

    growth = args.large / args.small
    rss = {k: (small[k], large[k]) for k in ("rss_parent_mb", "rss_total_mb")}
    flat = all(b <= 1.15 * a + 20 for a, b in rss.values())
    read_rates = {b: b * len(w) / sum(w) for b, w in waits.items()}
    limit_parallel = mean["limit"] * workers
    checks = {
        f"(c2) >= 0.8 x (a) x {workers}": mean["oursW"] >= 0.8 * limit_parallel,
        "(c1) >= 2 x (b1), per core": mean["ours1"] >= 2 * mean["naive1"],
        f"(c2) >= 2 x (b2), both {workers} processes": mean["oursW"] >= 2 * mean["naiveW"],
        f"(c2) peak RSS flat at {growth:.0f}x input (within 15% + 20 MB)": flat,
        "tf.data >= 1,000 images/s": min(read_rates.values()) >= 1000,
    }
    lines = [
        f"input: {args.images} of the {len(files)} real NIH 1024x1024 PNGs per variant per round, {args.rounds} "
        f"interleaved rounds; {SIZE}px PNG records; {workers} worker processes for the parallel variants",
        "rates: images/s per round (worst = the tail); per-image times for the one-process loops",
        f"(a)  limit, decode + resize only, 1 process: {describe_rates(limit_rates)}",
        f"     per image: {describe(sum(rounds['limit'], []))}",
        f"(b1) naive PIL loop, 1 process, one TFRecord: {describe_rates(naive1_rates)}",
        f"     per image: {describe(sum(rounds['naive1'], []))}",
        f"(c1) our preprocess, 1 worker: {describe_rates(ours1_rates)}",
        f"(b2) naive PIL loop in a Pool of {workers}, one TFRecord each (warm pool): {describe_rates(naiveW_rates)}",
        f"(c2) our preprocess, {workers} workers (pool start-up included): {describe_rates(oursW_rates)}",
        f"per core: (c1) / (b1) = {mean['ours1'] / mean['naive1']:.2f} x (per round "
        f"{per_round(ours1_rates, naive1_rates)}); (c2) / {workers} / (b1) = "
        f"{mean['oursW'] / workers / mean['naive1']:.2f} x (per round {per_round(oursW_rates, naive1_rates, workers)})",
        f"equally parallel: (c2) / (b2) = {mean['oursW'] / mean['naiveW']:.2f} x (per round "
        f"{per_round(oursW_rates, naiveW_rates)})",
        f"against the limit: (c1) / (a) = {mean['ours1'] / mean['limit']:.2f} x; (c2) / ((a) x {workers}) = "
        f"{mean['oursW'] / limit_parallel:.2f} x; scaling (c2) / (c1) = {mean['oursW'] / mean['ours1']:.2f} x "
        f"on {workers} cores",
        contention_line(busy),
        f"record size {large['bytes'] / large['images'] / 1024:.1f} KB; all {NIH_IMAGES:,} NIH images at (c2)'s mean "
        f"rate: {NIH_IMAGES / mean['oursW'] / 60:.0f} min ((b2): {NIH_IMAGES / mean['naiveW'] / 60:.0f} min)",
        f"peak RSS, (c2) in a child process, {args.small} -> {args.large} rows: stage process "
        f"{rss['rss_parent_mb'][0]:.0f} -> {rss['rss_parent_mb'][1]:.0f} MB, with its {workers} workers "
        f"{rss['rss_total_mb'][0]:.0f} -> {rss['rss_total_mb'][1]:.0f} MB",
        *[f"tf.data read + decode + default augmentation over the {args.large} records, batch {b}: "
          f"{read_rates[b]:.0f} images/s; wait per batch {describe(w, digits=1)}" for b, w in waits.items()],
        "  (what a training step consumes: see bench_train)",
        *[f"target {name}: {'meets' if ok else 'MISSES'}" for name, ok in checks.items()],
    ]
    report(args, SECTION, "bench_preprocess: preprocess and the input pipeline on real NIH PNGs", lines)


if __name__ == "__main__":
    main()
