"""The tf.data input pipeline over the preprocess stage's shards.

Yields (image, labels): image float32 (size, size, 1) with grey values
0..255 (see pipeline.imaging for the convention), labels float32 (14,).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.tfrecords import parse_example

INDEX_FILE = "index.json"


def read_shard_index(tfrecord_dir: Path) -> dict:
    path = Path(tfrecord_dir) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard index not found (run the preprocess stage)")
    return json.loads(path.read_text())


def shard_files(tfrecord_dir: Path, split: str) -> list[str]:
    index = read_shard_index(tfrecord_dir)
    return [str(Path(tfrecord_dir) / s["file"]) for s in index["shards"] if s["split"] == split]


def decode_record(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    example = parse_example(serialized)
    image = tf.io.decode_image(example["image"], channels=1, expand_animations=False)
    example["image"] = tf.cast(image, tf.float32)
    example["labels"] = tf.cast(example["labels"], tf.float32)
    return example


def augment(image: tf.Tensor, seed: tf.Tensor, settings: dict) -> tf.Tensor:
    """Small photometric and geometric jitter, train split only."""
    seeds = tf.random.split(seed, 3)
    brightness = float(settings.get("brightness", 0.0))
    contrast = float(settings.get("contrast", 0.0))
    shift = float(settings.get("shift", 0.0))
    if brightness > 0:
        image = tf.image.stateless_random_brightness(image, 255.0 * brightness, seeds[0])
    if contrast > 0:
        image = tf.image.stateless_random_contrast(image, 1 - contrast, 1 + contrast, seeds[1])
    if shift > 0:
        size = tf.shape(image)[0]
        pad = tf.cast(tf.cast(size, tf.float32) * shift, tf.int32)
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        image = tf.image.stateless_random_crop(padded, tf.shape(image), seeds[2])
    return tf.clip_by_value(image, 0.0, 255.0)


def make_dataset(
    files: list[str],
    batch_size: int,
    training: bool = False,
    augmentation: dict | None = None,
    seed: int = 0,
    shuffle_buffer: int = 512,
    cache: bool = False,
    with_ids: bool = False,
) -> tf.data.Dataset:
    """Batches of (image, labels), or (image, labels, image_id) with with_ids."""
    if not files:
        raise ValueError("no TFRecord shards given")
    dataset = tf.data.TFRecordDataset(files)
    dataset = dataset.map(decode_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if augmentation:
            counter = tf.data.Dataset.counter()
            dataset = tf.data.Dataset.zip((dataset, counter))
            dataset = dataset.map(
                lambda ex, i: {**ex, "image": augment(ex["image"], tf.stack([tf.cast(seed, tf.int64), i]), augmentation)},
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    if with_ids:
        dataset = dataset.map(lambda ex: (ex["image"], ex["labels"], ex["image_id"]))
    else:
        dataset = dataset.map(lambda ex: (ex["image"], ex["labels"]))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def collect_split(tfrecord_dir: Path, split: str, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A whole split in memory: images (n, s, s, 1), labels (n, 14), image ids.
    For the evaluation and test splits, which are small next to train."""
    images, labels, ids = [], [], []
    for x, y, i in make_dataset(shard_files(tfrecord_dir, split), batch_size, with_ids=True):
        images.append(x.numpy())
        labels.append(y.numpy())
        ids.extend(v.decode() for v in i.numpy())
    if not images:
        return np.zeros((0, 0, 0, 1), np.float32), np.zeros((0, 14), np.float32), []
    return np.concatenate(images), np.concatenate(labels), ids
