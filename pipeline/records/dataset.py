"""The tf.data input pipeline over the preprocess stage's shards.

Yields batches of (image, labels): image float32 (batch, size, size, 1) with
grey values 0..255, labels float32 (batch, 14) in FINDINGS order. That is
the one input convention of train, evaluate, explain and predict (see
pipeline.records.imaging); the model normalises inside itself. For a model with
patient metadata (pipeline.core.patient) the inputs are a dict
{"image": ..., "metadata": float32 (batch, 3)} instead of the image alone.

Augmentation (train only) works on whole batches: one affine resample per
image for rotation, zoom and shift (and the optional flip), then brightness
and contrast, all drawn from seeded stateless generators, so a run is
repeatable and each epoch still sees new jitter.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from pipeline.core.labels import MAX_AGE, MIN_AGE
from pipeline.core.patient import AGE_SCALE, ANTERO_POSTERIOR, IMAGE_INPUT, IMPUTED_AGE, MALE, PATIENT_INPUT
from pipeline.records.tfrecords import INDEX_FILE, parse_example

# Augmentation settings (params.yaml train.augment) and what 0/false means: off.
AUGMENT_KEYS = ("rotation", "zoom", "shift", "hflip", "brightness", "contrast")


def read_shard_index(tfrecord_dir: Path) -> dict:
    path = Path(tfrecord_dir) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard index not found (run the preprocess stage)")
    return json.loads(path.read_text())


def shard_files(tfrecord_dir: Path, split: str) -> list[str]:
    index = read_shard_index(tfrecord_dir)
    return [str(Path(tfrecord_dir) / s["file"]) for s in index["shards"] if s["split"] == split]


def patient_vector(age: tf.Tensor, sex: tf.Tensor, view: tf.Tensor) -> tf.Tensor:
    """pipeline.core.patient.encode_patient for a record's features (validated
    values: the validate stage checked sex and view). A missing age, written as
    MISSING_AGE (-1), or any age outside 0..120 becomes IMPUTED_AGE, as
    encode_patient does for a missing one at serving."""
    years = tf.cast(age, tf.float32)
    years = tf.where((years >= MIN_AGE) & (years <= MAX_AGE), years, float(IMPUTED_AGE))
    return tf.stack([
        years / AGE_SCALE,
        tf.cast(tf.equal(sex, MALE), tf.float32),
        tf.cast(tf.equal(view, ANTERO_POSTERIOR), tf.float32),
    ])


def decode_record(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """One serialized Example -> its features, image as uint8 (size, size, 1),
    plus "metadata", the encoded patient metadata."""
    example = parse_example(serialized)
    example["image"] = tf.io.decode_image(example["image"], channels=1, expand_animations=False)
    example["labels"] = tf.cast(example["labels"], tf.float32)
    example[PATIENT_INPUT] = patient_vector(example["age"], example["sex"], example["view"])
    return example


def check_augmentation(settings: dict | None) -> dict:
    """The augmentation settings with every key present; unknown keys are an error."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f"train.augment: unknown setting(s) {unknown}; known: {list(AUGMENT_KEYS)}")
    checked = {key: float(settings.get(key, 0) or 0) for key in AUGMENT_KEYS}
    checked["hflip"] = bool(settings.get("hflip", False))
    for key in ("zoom", "shift", "brightness", "contrast"):
        if not 0 <= checked[key] < 1:
            raise ValueError(f"train.augment.{key} must be in [0, 1), got {checked[key]}")
    if not 0 <= checked["rotation"] <= 45:
        raise ValueError(f"train.augment.rotation is in degrees, 0..45, got {checked['rotation']}")
    return checked


def affine_transforms(batch: tf.Tensor, size: tf.Tensor, settings: dict, seed: tf.Tensor) -> tf.Tensor:
    """Per-image (batch, 8) projective transforms: output pixel -> input pixel.

    input = R(angle) . flip . (output - centre) / zoom + centre - shift
    """
    uniform = tf.random.stateless_uniform([batch, 5], seed=seed, minval=-1.0, maxval=1.0)
    angle = uniform[:, 0] * (settings["rotation"] * math.pi / 180.0)
    zoom = 1.0 + uniform[:, 1] * settings["zoom"]
    size = tf.cast(size, tf.float32)
    shift_x = uniform[:, 2] * settings["shift"] * size
    shift_y = uniform[:, 3] * settings["shift"] * size
    flip = tf.where(uniform[:, 4] < 0, -1.0, 1.0) if settings["hflip"] else tf.ones([batch])
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
    centre = (size - 1.0) / 2.0
    a2 = centre - (a0 + a1) * centre - shift_x
    b2 = centre - (b0 + b1) * centre - shift_y
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def warp_batch(images: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Resample each uint8 image (size, size, 1) through its output->input affine transform.

    OpenCV rather than TF's ImageProjectiveTransform: measured 7x faster on a
    CPU at 320px (bilinear, reflected borders), which keeps augmentation off
    the training step's critical path.
    """
    size = images.shape[1]
    out = np.empty_like(images)
    for i, (image, t) in enumerate(zip(images, transforms)):
        out[i, :, :, 0] = cv2.warpAffine(
            image[:, :, 0], t[:6].reshape(2, 3), (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101,
        )
    return out


def augment_batch(images: tf.Tensor, seed: tf.Tensor, settings: dict) -> tf.Tensor:
    """Jitter a uint8 batch (batch, size, size, 1); float32 grey values 0..255 out."""
    batch, size = tf.shape(images)[0], tf.shape(images)[1]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if settings["rotation"] or settings["zoom"] or settings["shift"] or settings["hflip"]:
        transforms = affine_transforms(batch, size, settings, seeds[0])
        warped = tf.numpy_function(warp_batch, [images, transforms], tf.uint8, stateful=False)
        images = tf.ensure_shape(warped, images.shape)
    images = tf.cast(images, tf.float32)
    if settings["brightness"]:
        delta = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[1], -1.0, 1.0) * (255.0 * settings["brightness"])
        images = images + delta
    if settings["contrast"]:
        factor = 1.0 + tf.random.stateless_uniform([batch, 1, 1, 1], seeds[2], -1.0, 1.0) * settings["contrast"]
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * factor + mean
    return tf.clip_by_value(images, 0.0, 255.0)


def make_dataset(
    files: list[str],
    batch_size: int,
    training: bool = False,
    augmentation: dict | None = None,
    seed: int = 0,
    shuffle_buffer: int = 1024,
    cache: bool = False,
    with_ids: bool = False,
    records: int | None = None,
    metadata: bool = False,
    workers: int = 1,
    worker_index: int = 0,
) -> tf.data.Dataset:
    """Batches of (image, labels), or (image, labels, image_id) with with_ids;
    with metadata, ({"image", "metadata"}, labels[, image_id]).

    training: shards and records shuffled (reshuffled each epoch from `seed`)
    and `augmentation` applied; otherwise records come in shard order.
    cache: keep the decoded uint8 images in memory after the first pass
    (size*size bytes per image: ~100 KB at 320px, ~8 GB for NIH's train split).
    records: the number of records in `files` (from the shard index), so that
    Keras knows an epoch's length instead of discovering it by running out.
    workers, worker_index: with several workers (multi-worker training), this
    worker's share of the records, as worker_shard_policy says; an epoch's
    length is then left unknown: the shares differ by up to a shard, and TF's
    distributed iterator ends the epoch on all workers together.
    """
    if not files:
        raise ValueError("no TFRecord shards given")
    policy = worker_shard_policy(len(files), workers)
    if policy == tf.data.experimental.AutoShardPolicy.FILE:
        # Picked here rather than by TF's FILE auto-sharding, which cannot see
        # the files through the zip with the augmentation seeds.
        files = files[worker_index::workers]
    settings = check_augmentation(augmentation) if training else None
    dataset = record_stream(files, shuffled=training and not cache, seed=seed)
    dataset = dataset.map(decode_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # Metadata rides behind the labels until the end, so augmentation sees (image, labels, ...).
    keys = ("image", "labels", *((PATIENT_INPUT,) if metadata else ()), *(("image_id",) if with_ids else ()))
    dataset = dataset.map(lambda ex: tuple(ex[k] for k in keys), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = float_images(dataset, settings, seed)
    if metadata:
        dataset = dataset.map(lambda image, labels, vector, *ids: (
            {IMAGE_INPUT: image, PATIENT_INPUT: vector}, labels, *ids))
    if workers > 1:
        dataset = dataset.with_options(worker_options(policy))
    elif records is not None:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(math.ceil(records / batch_size)))
    return dataset.prefetch(tf.data.AUTOTUNE)


def float_images(dataset: tf.data.Dataset, augmentation: dict | None, seed: int) -> tf.data.Dataset:
    """Batches with their uint8 images as float32, augmented where `augmentation` turns any on."""
    if augmentation and any(augmentation.values()):
        # One seed per batch from a stream that is new each epoch yet fixed by `seed`.
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        return tf.data.Dataset.zip((dataset, batch_seeds)).map(
            lambda batch, s: (augment_batch(batch[0], s, augmentation), *batch[1:]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )
    return dataset.map(lambda image, *rest: (tf.cast(image, tf.float32), *rest), num_parallel_calls=tf.data.AUTOTUNE)


def record_stream(files: list[str], shuffled: bool, seed: int) -> tf.data.Dataset:
    """The shards' serialized records: with `shuffled` (and several shards) the
    shard order is shuffled each epoch and records are read from several shards at once."""
    if shuffled and len(files) > 1:
        dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
        return dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return tf.data.TFRecordDataset(files)


def worker_options(policy) -> tf.data.Options:
    """The auto-shard policy a worker's dataset declares (files were already
    picked by hand under FILE, so TF's own sharding is then off)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if policy == tf.data.experimental.AutoShardPolicy.FILE else policy)
    return options


def worker_shard_policy(files: int, workers: int) -> tf.data.experimental.AutoShardPolicy:
    """How `files` are split across `workers`: FILE (each worker reads its own
    shards) when there are at least as many shards as workers, else DATA (every
    worker reads all shards and keeps its share of the batches); OFF for one worker."""
    policy = tf.data.experimental.AutoShardPolicy
    if workers <= 1:
        return policy.OFF
    return policy.FILE if files >= workers else policy.DATA
