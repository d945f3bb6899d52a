"""Preprocess: manifest + original images -> 320px TFRecord shards per split.

Decoding and resizing run in worker processes; the parent writes records in
manifest order, so the shards are byte-identical whatever the worker count.
Images that cannot be decoded are quarantined with their reason, never
silently dropped, and the rest are written.
"""
from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipeline.imaging import ImageError, decode_to_gray8, encode_image, resize_square
from pipeline.labels import FINDINGS, SPLITS

# Images handed to the pool per round trip, per worker: bounds memory
# (only this many decoded images are in flight) while keeping workers busy.
IMAGES_PER_WORKER_BATCH = 16


def prepare_image(task: tuple[str, int, str, str, int]) -> tuple[bytes | None, int, int, str | None]:
    """Worker: (path, size, fit, encoding, quality) -> (encoded, width, height, error)."""
    path, size, fit, encoding, quality = task
    try:
        gray = decode_to_gray8(Path(path).read_bytes(), path)
        height, width = gray.shape
        small = resize_square(gray, size, fit)
        return encode_image(small, encoding, quality), width, height, None
    except ImageError as exc:
        return None, 0, 0, str(exc)
    except OSError as exc:
        return None, 0, 0, f"{path}: cannot read: {exc.strerror or exc}"


def _batches(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


class Progress:
    """A line per ~5% of the work, to stderr."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0
        self.start = time.monotonic()
        self.step = max(1, total // 20)
        self.next_report = self.step

    def advance(self, n: int) -> None:
        self.done += n
        if self.done >= self.next_report or self.done == self.total:
            rate = self.done / max(time.monotonic() - self.start, 1e-9)
            print(f"{self.label}: {self.done}/{self.total} images ({rate:.0f}/s)", file=sys.stderr, flush=True)
            while self.next_report <= self.done:
                self.next_report += self.step


def write_tfrecord_shards(
    manifest: pd.DataFrame,
    out_dir: Path,
    image_size: int,
    fit: str = "crop",
    encoding: str = "png",
    jpeg_quality: int = 95,
    shard_size: int = 1000,
    workers: int = 1,
) -> tuple[dict, pd.DataFrame]:
    """Write `{split}-NNNNN.tfrecord` shards into out_dir (which must exist).

    Returns the shard index and the quarantine table (image_id, path, reason).
    """
    from pipeline.tfrecords import ShardWriter, serialize_example  # TensorFlow: parent only

    quarantined: list[dict] = []
    index: dict = {
        "image_size": image_size,
        "fit": fit,
        "encoding": encoding,
        "findings": list(FINDINGS),
        "splits": {},
        "shards": [],
    }
    progress = Progress(len(manifest), "preprocess")
    # spawn, not fork: the parent has TensorFlow loaded, which is not fork-safe.
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers) if workers > 1 else None
    try:
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            writer = ShardWriter(out_dir, split, shard_size)
            positives = [0] * len(FINDINGS)
            written = 0
            for batch in _batches(rows, max(1, workers) * IMAGES_PER_WORKER_BATCH):
                tasks = [(p, image_size, fit, encoding, jpeg_quality) for p in batch["path"]]
                results = pool.map(prepare_image, tasks) if pool else map(prepare_image, tasks)
                for row, (encoded, width, height, error) in zip(batch.itertuples(index=False), results):
                    if error is not None:
                        quarantined.append({"image_id": row.image_id, "path": row.path, "split": split, "reason": error})
                        continue
                    labels = [int(getattr(row, f)) for f in FINDINGS]
                    writer.write(
                        serialize_example(
                            encoded, labels, row.image_id, row.patient_id, row.age,
                            row.sex, row.view, width, height,
                        )
                    )
                    positives = [p + v for p, v in zip(positives, labels)]
                    written += 1
                progress.advance(len(batch))
            index["shards"].extend(writer.close())
            index["splits"][split] = {
                "records": written,
                "positives": dict(zip(FINDINGS, positives)),
            }
    finally:
        if pool:
            pool.close()
            pool.join()
    index["quarantined"] = len(quarantined)
    quarantine = pd.DataFrame(quarantined, columns=["image_id", "path", "split", "reason"])
    return index, quarantine
