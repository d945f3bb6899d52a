"""The TFRecord Example schema, defined once, and its writer and parser."""
from __future__ import annotations

import hashlib
from pathlib import Path

import tensorflow as tf

from pipeline.core.labels import NUM_FINDINGS
from pipeline.core.patient import age_is_missing

# Beside the shards: settings, per-split counts, each shard's records and sha256.
INDEX_FILE = "index.json"
# A record's "age" when the manifest has none (NIH's CSV left it out, or gave
# an impossible one such as 414): an int64 feature has no NA, and -1 can never
# be a real age, so readers tell it apart (pipeline.records.dataset imputes it
# for the metadata model; pipeline.model.audit puts it in no age band).
MISSING_AGE = -1

# One Example per image. Everything a later stage needs travels with it,
# so train/evaluate/explain never go back to the manifest or the originals.
FEATURE_SPEC = {
    "image": tf.io.FixedLenFeature([], tf.string),  # PNG or JPEG, uint8, 1 channel
    "labels": tf.io.FixedLenFeature([NUM_FINDINGS], tf.int64),  # multi-hot, FINDINGS order
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "patient_id": tf.io.FixedLenFeature([], tf.int64),
    "age": tf.io.FixedLenFeature([], tf.int64),  # years; MISSING_AGE when unknown
    "sex": tf.io.FixedLenFeature([], tf.string),
    "view": tf.io.FixedLenFeature([], tf.string),
    "orig_width": tf.io.FixedLenFeature([], tf.int64),
    "orig_height": tf.io.FixedLenFeature([], tf.int64),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values: list[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def record_age(age) -> int:
    """The manifest's age (int, or pandas' NA / None / NaN when unknown) as the record's int64."""
    return MISSING_AGE if age_is_missing(age) else int(age)


def serialize_example(
    image: bytes,
    labels: list[int],
    image_id: str,
    patient_id: int,
    age: int | None,
    sex: str,
    view: str,
    orig_width: int,
    orig_height: int,
) -> bytes:
    features = {
        "image": _bytes(image),
        "labels": _ints(labels),
        "image_id": _bytes(image_id.encode()),
        "patient_id": _ints([patient_id]),
        "age": _ints([record_age(age)]),
        "sex": _bytes(sex.encode()),
        "view": _bytes(view.encode()),
        "orig_width": _ints([orig_width]),
        "orig_height": _ints([orig_height]),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    # deterministic: the feature map is otherwise serialised in an order that
    # changes from process to process, and the same image would give new
    # shard bytes on every run, so DVC would retrain on a no-op.
    return example.SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    return tf.io.parse_single_example(serialized, FEATURE_SPEC)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.tfrecord"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Writes records for one split into numbered shards of `shard_size` records.

    Each shard's name, record count and checksum go into `shards`, the index
    a reader uses to find and verify the data.
    """

    def __init__(self, directory: Path, split: str, shard_size: int):
        self.directory = directory
        self.split = split
        self.shard_size = shard_size
        self.shards: list[dict] = []
        self._writer: tf.io.TFRecordWriter | None = None
        self._count = 0

    def write(self, record: bytes) -> None:
        if self._writer is None or self._count == self.shard_size:
            self._close_shard()
            name = shard_name(self.split, len(self.shards))
            self.shards.append({"file": name, "split": self.split, "records": 0})
            self._writer = tf.io.TFRecordWriter(str(self.directory / name))
            self._count = 0
        self._writer.write(record)
        self._count += 1
        self.shards[-1]["records"] = self._count

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            last = self.shards[-1]
            last["sha256"] = file_sha256(self.directory / last["file"])

    def close(self) -> list[dict]:
        self._close_shard()
        return self.shards
