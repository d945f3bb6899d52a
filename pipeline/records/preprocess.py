"""Preprocess: manifest + original images -> 320px TFRecord shards per split.

Decoding and resizing run in worker processes; the parent writes records in
manifest order, so the shards are byte-identical whatever the worker count.
Memory is bounded by a fixed number of images in flight, not by the data
size. Films that fail the checks a served film must pass
(pipeline.records.film: unreadable, implausible shape, lateral, blank), and a
film whose worker process dies decoding it, are quarantined with their reason,
never silently dropped, and the rest are written.
"""
from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pandas as pd

from pipeline.core.labels import FINDINGS, SPLITS
from pipeline.core.parallel import ordered_map
from pipeline.core.progress import Progress
from pipeline.records.film import prepare_image
from pipeline.records.imaging import MAX_ASPECT, MIN_SIDE

QUARANTINE_COLUMNS = ["image_id", "path", "split", "reason"]
# Images per round trip to a worker: amortises the hand-over (measured at
# ~1 ms per task in the parent) while keeping few images in flight.
IMAGES_PER_TASK = 8


def quarantined_by_death(task: tuple, reason: str) -> tuple[None, int, int, str]:
    """prepare_image's result for a film whose worker died decoding it (pipeline.core.parallel)."""
    return None, 0, 0, f"{task[0]}: {reason}"


def write_tfrecord_shards(
    manifest: pd.DataFrame,
    out_dir: Path,
    image_size: int,
    fit: str = "crop",
    encoding: str = "png",
    jpeg_quality: int = 95,
    shard_size: int = 1000,
    workers: int = 1,
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
) -> tuple[dict, pd.DataFrame]:
    """Write `{split}-NNNNN.tfrecord` shards into out_dir (which must exist).

    Returns the shard index (settings, per-split record and positive counts,
    each shard's name, records and sha256) and the quarantine table.
    """
    from pipeline.records.tfrecords import ShardWriter, serialize_example  # TensorFlow: parent only

    if fit not in ("crop", "pad"):
        raise ValueError(f"preprocess.fit must be 'crop' or 'pad', got {fit!r}")
    if encoding not in ("png", "jpeg"):
        raise ValueError(f"preprocess.encoding must be 'png' or 'jpeg', got {encoding!r}")
    if shard_size < 1:
        raise ValueError(f"preprocess.shard_size must be >= 1, got {shard_size}")
    if min_side < 1:
        raise ValueError(f"preprocess.min_side must be >= 1, got {min_side}")
    if max_aspect < 1.0:
        raise ValueError(f"preprocess.max_aspect must be >= 1.0 (long side / short side), got {max_aspect}")
    rows = pd.concat([manifest[manifest["split"] == split] for split in SPLITS])
    tasks = ((path, image_size, fit, encoding, jpeg_quality, min_side, max_aspect) for path in rows["path"])
    quarantined: list[dict] = []
    index: dict = {"image_size": image_size, "fit": fit, "encoding": encoding,
                   "findings": list(FINDINGS), "splits": {}, "shards": []}
    progress = Progress(len(rows), "preprocess")
    # closing() shuts the worker pool down, also when a shard write fails
    with closing(ordered_map(prepare_image, tasks, workers, chunk_size=IMAGES_PER_TASK,
                             on_worker_death=quarantined_by_death, label="preprocess")) as results:
        for split in SPLITS:
            writer = ShardWriter(out_dir, split, shard_size)
            positives = [0] * len(FINDINGS)
            written = 0
            for row in rows[rows["split"] == split].itertuples(index=False):
                encoded, width, height, error = next(results)
                progress.advance()
                if error is not None:
                    quarantined.append({"image_id": row.image_id, "path": row.path, "split": split,
                                        "reason": error})
                    continue
                labels = [int(getattr(row, f)) for f in FINDINGS]
                writer.write(serialize_example(encoded, labels, row.image_id, row.patient_id, row.age,
                                               row.sex, row.view, width, height))
                positives = [p + v for p, v in zip(positives, labels)]
                written += 1
            index["shards"].extend(writer.close())
            index["splits"][split] = {"records": written, "positives": dict(zip(FINDINGS, positives))}
    index["quarantined"] = len(quarantined)
    return index, pd.DataFrame(quarantined, columns=QUARANTINE_COLUMNS)
