"""The tf.data input pipeline: decoding, order, seeded shuffling and augmentation."""
import math

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from pipeline.core.patient import AGE_SCALE, IMPUTED_AGE
from pipeline.records.dataset import affine_transforms, augment_batch, check_augmentation, make_dataset
from pipeline.records.preprocess import write_tfrecord_shards
from pipeline.records.tfrecords import MISSING_AGE, parse_example
from tests.conftest import build_manifest

RATIOS = {"train": 0.5, "val": 0.25, "test": 0.25}
OFF = check_augmentation({})


@pytest.fixture
def shards(small_nih_root, tmp_path):
    manifest, _ = build_manifest(small_nih_root, RATIOS, seed=0)
    out = tmp_path / "shards"
    out.mkdir()
    index, _ = write_tfrecord_shards(manifest, out, image_size=32, shard_size=2)
    return [str(out / s["file"]) for s in index["shards"]]


def test_a_missing_age_is_written_as_missing_age_and_fed_as_the_imputed_age(small_nih_root, tmp_path):
    """Ingest keeps images whose age NIH left out or mistyped, with <NA> in a
    nullable Int64 column: preprocess writes -1 for them instead of failing,
    and the metadata input gets IMPUTED_AGE."""
    manifest, _ = build_manifest(small_nih_root, RATIOS, seed=0)
    manifest["age"] = manifest["age"].astype("Int64")
    unknown = set(manifest["image_id"].iloc[::3])
    manifest.loc[manifest["image_id"].isin(unknown), "age"] = pd.NA
    out = tmp_path / "shards"
    out.mkdir()
    index, quarantined = write_tfrecord_shards(manifest, out, image_size=32, shard_size=5)
    files = [str(out / s["file"]) for s in index["shards"]]
    assert quarantined.empty and sum(s["records"] for s in index["shards"]) == len(manifest)

    ages = {r["image_id"].numpy().decode(): int(r["age"].numpy())
            for r in tf.data.TFRecordDataset(files).map(parse_example)}
    given = dict(zip(manifest["image_id"], manifest["age"]))
    assert ages == {i: MISSING_AGE if i in unknown else int(given[i]) for i in given}

    fed = {}
    for inputs, _, ids in make_dataset(files, 4, with_ids=True, metadata=True):
        fed.update(zip((i.decode() for i in ids.numpy()), inputs["metadata"].numpy()[:, 0]))
    expected = {i: (IMPUTED_AGE if i in unknown else given[i]) / AGE_SCALE for i in given}
    np.testing.assert_allclose([fed[i] for i in given], [expected[i] for i in given], rtol=1e-6)


def epochs(dataset, n=2):
    return [[tuple(t.numpy() for t in batch) for batch in dataset] for _ in range(n)]


def by_id(batches):
    return {i.decode(): (x, y) for xs, ys, ids in batches for x, y, i in zip(xs, ys, ids)}


def test_training_order_is_seeded_and_new_each_epoch_without_changing_the_data(shards):
    settings = {"rotation": 5, "zoom": 0.05, "shift": 0.03, "brightness": 0.05, "contrast": 0.1}
    first = epochs(make_dataset(shards, 4, training=True, augmentation=settings, seed=7, with_ids=True))
    again = epochs(make_dataset(shards, 4, training=True, augmentation=settings, seed=7, with_ids=True))
    for a, b in zip(first, again):
        for batch_a, batch_b in zip(a, b):
            for ta, tb in zip(batch_a, batch_b):
                np.testing.assert_array_equal(ta, tb)
    order = [[i for _, _, ids in epoch for i in ids] for epoch in first]
    assert sorted(order[0]) == sorted(order[1]) and len(order[0]) == 12
    assert order[0] != order[1], "reshuffled each epoch"
    plain = by_id(epochs(make_dataset(shards, 4, with_ids=True), 1)[0])
    augmented = by_id(first[0])
    assert {k: v[1].tolist() for k, v in plain.items()} == {k: v[1].tolist() for k, v in augmented.items()}
    assert all(not np.array_equal(plain[k][0], augmented[k][0]) for k in plain)


def test_no_augmentation_in_training_keeps_pixels(shards):
    plain = by_id(epochs(make_dataset(shards, 5, with_ids=True), 1)[0])
    shuffled = by_id(epochs(make_dataset(shards, 5, training=True, augmentation={"rotation": 0}, with_ids=True), 1)[0])
    assert plain.keys() == shuffled.keys()
    for key, (image, _) in plain.items():
        assert image.dtype == np.float32 and image.shape == (32, 32, 1)
        np.testing.assert_array_equal(image, shuffled[key][0])


def test_unknown_or_out_of_range_settings_are_refused():
    with pytest.raises(ValueError, match="unknown setting"):
        check_augmentation({"rotate": 5})
    with pytest.raises(ValueError, match="zoom"):
        check_augmentation({"zoom": 1.5})
    with pytest.raises(ValueError, match="degrees"):
        check_augmentation({"rotation": 90})


def transforms(settings, n=64, size=100, seed=(1, 2)):
    return affine_transforms(n, tf.constant(size), check_augmentation(settings), tf.constant(seed, tf.int64)).numpy()


def maps(t, x, y):
    return t[0] * x + t[1] * y + t[2], t[3] * x + t[4] * y + t[5]


def test_rotation_and_zoom_keep_the_centre_and_stay_in_range():
    centre = (100 - 1) / 2
    for t in transforms({"rotation": 10, "zoom": 0.1}):
        linear = np.array([[t[0], t[1]], [t[3], t[4]]])
        scale = math.sqrt(abs(np.linalg.det(linear)))
        assert 1 / 1.1 - 1e-6 <= scale <= 1 / 0.9 + 1e-6
        rotation = linear / scale
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(2), atol=1e-5)
        assert abs(math.degrees(math.atan2(rotation[1, 0], rotation[0, 0]))) <= 10 + 1e-4
        np.testing.assert_allclose(maps(t, centre, centre), (centre, centre), atol=1e-3)
    for t in transforms({"shift": 0.05}):
        np.testing.assert_allclose(t[[0, 1, 3, 4]], [1, 0, 0, 1], atol=1e-6)
        assert abs(t[2]) <= 5 + 1e-4 and abs(t[5]) <= 5 + 1e-4
    np.testing.assert_allclose(transforms({}), np.tile([1, 0, 0, 0, 1, 0, 0, 0], (64, 1)), atol=1e-5)


def test_a_point_lands_where_the_transform_says():
    """Output pixel p shows input pixel T(p): a bright dot moves to T^-1(dot)."""
    settings = check_augmentation({"rotation": 20, "zoom": 0.15, "shift": 0.08})
    seed = tf.constant([3, 4], tf.int64)
    dot = (40.0, 26.0)  # x, y in the input
    images = np.zeros((8, 64, 64, 1), np.uint8)
    images[:, 25:28, 39:42] = 255
    out = augment_batch(tf.constant(images), seed, settings).numpy()
    seeds = tf.random.experimental.stateless_split(seed, 3)
    for result, t in zip(out, affine_transforms(8, tf.constant(64), settings, seeds[0]).numpy()):
        forward = np.linalg.inv(np.array([[t[0], t[1], t[2]], [t[3], t[4], t[5]], [0, 0, 1]]))
        expected = forward @ np.array([dot[0], dot[1], 1.0])
        y, x = np.unravel_index(np.argmax(result[:, :, 0]), result.shape[:2])
        assert abs(x - expected[0]) <= 1.5 and abs(y - expected[1]) <= 1.5, (x, y, expected)


def test_flip_is_off_by_default_and_mirrors_exactly_when_on():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (32, 16, 16, 1)).astype(np.uint8)
    seed = tf.constant([5, 6], tf.int64)
    np.testing.assert_array_equal(augment_batch(tf.constant(images), seed, OFF).numpy(), images)
    flipped = augment_batch(tf.constant(images), seed, check_augmentation({"hflip": True})).numpy()
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images)]
    same = [np.array_equal(f, i) for f, i in zip(flipped, images)]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_brightness_and_contrast_stay_in_the_grey_range():
    images = np.full((16, 8, 8, 1), 250, np.uint8)
    images[:, :4] = 5
    out = augment_batch(tf.constant(images), tf.constant([1, 1], tf.int64),
                        check_augmentation({"brightness": 0.2, "contrast": 0.5})).numpy()
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert len({round(float(o.mean()), 3) for o in out}) > 1
