"""Training on real TFRecord shards: class weights, loss, checkpoint, every backbone builds."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import load_keras_model
from pipeline.explain.gradcam import last_feature_map_layer
from pipeline.model.architectures import build_model
from pipeline.model.backbones import BACKBONES
from pipeline.model.train import (
    MAX_POSITIVE_WEIGHT,
    positive_weights,
    train_model,
    weighted_binary_crossentropy,
)
from pipeline.records.imaging import load_xray
from pipeline.records.preprocess import write_tfrecord_shards
from tests.conftest import NO_AUGMENT, build_manifest, section_settings


def index_with(train_positives: dict, records: int) -> dict:
    return {"splits": {"train": {"records": records, "positives": {f: train_positives.get(f, 0) for f in FINDINGS}}}}


def test_positive_weights_from_train_counts():
    weights = positive_weights(index_with({"Mass": 10, "Effusion": 50, "Hernia": 0}, 100))
    assert weights[FINDINGS.index("Mass")] == pytest.approx(9.0)
    assert weights[FINDINGS.index("Effusion")] == pytest.approx(1.0)
    assert weights[FINDINGS.index("Hernia")] == MAX_POSITIVE_WEIGHT


def test_weighted_bce_scales_only_positive_terms():
    pos_weight = np.full(14, 4.0, np.float32)
    loss = weighted_binary_crossentropy(pos_weight)
    y_pred = tf.fill((1, 14), 0.5)
    plain = -np.log(0.5)
    assert float(loss(tf.ones((1, 14)), y_pred)[0]) == pytest.approx(4 * plain, rel=1e-5)
    assert float(loss(tf.zeros((1, 14)), y_pred)[0]) == pytest.approx(plain, rel=1e-5)


def test_small_model_trains_and_checkpoints(small_nih_root, tmp_path):
    manifest, _ = build_manifest(small_nih_root, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    out = tmp_path / "tfrecords"
    out.mkdir()
    index, _ = write_tfrecord_shards(manifest, out, image_size=32, shard_size=100)
    (out / "index.json").write_text(__import__("json").dumps(index))
    model = build_model("small_cnn", 32, "none", batchnorm_momentum=0.9)
    checkpoint = tmp_path / "model.keras"
    settings = section_settings("train", batch_size=4, epochs=2, learning_rate=1e-3, lr_schedule="constant",
                                augment={**NO_AUGMENT, "brightness": 0.1, "shift": 0.05})
    result = train_model(model, out, checkpoint, settings, seed=0)
    assert result["summary"]["epochs"] == 2 and len(result["history"]["loss"]) == 2
    assert np.isfinite(result["history"]["loss"]).all()
    reloaded = load_keras_model(checkpoint)
    assert reloaded.predict(np.zeros((1, 32, 32, 1), np.float32), verbose=0).shape == (1, 14)


def real_xrays(root, n: int = 2, size: int = 64) -> np.ndarray:
    """n real NIH images, float32 grey values 0..255 (batch, size, size, 1)."""
    files = sorted((root / "train").rglob("*.png"))[:n]
    return np.stack([load_xray(f, size) for f in files]).astype(np.float32)[..., None]


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_builds_and_trains_a_step_on_real_images(backbone, nih_64px):
    # 64 px: every backbone's smallest supported size is at most this (alexnet's is 32).
    model = build_model(backbone, 64, "none")
    assert isinstance(model.layers[-1], keras.layers.Dense) and model.layers[-1].name == "findings"
    assert last_feature_map_layer(model)  # Grad-CAM finds a 4-D feature map
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = real_xrays(nih_64px)
    y = np.zeros((2, 14), np.float32)
    y[0, 0] = 1
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert model.predict(x, verbose=0).shape == (2, 14)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        build_model("small_cnn", 32, str(tmp_path / "nope.weights.h5"))


@pytest.mark.parametrize("backbone", ["mobilenetv2", "vgg16"])
def test_weights_saved_from_an_imagenet_started_model_load(tmp_path, backbone):
    """train.weights: a path saved from a model started from ImageNet weights
    (three channels, the backbone's ImageNet scaling) builds that layout."""
    from pipeline.model.architectures import assemble_model

    started_from_imagenet = assemble_model(backbone, 32, "imagenet")
    saved = tmp_path / "imagenet-started.weights.h5"
    started_from_imagenet.save_weights(saved)
    model = build_model(backbone, 32, str(saved))
    assert model.get_layer("gray_to_rgb") is not None
    images = np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(model(images).numpy(), started_from_imagenet(images).numpy(), atol=1e-6)


def test_weights_of_another_model_are_refused_with_the_reason(tmp_path):
    saved = tmp_path / "small.weights.h5"
    build_model("small_cnn", 32, "none").save_weights(saved)
    expected = r"small\.weights\.h5 does not fit a mobilenetv2 model at 32 px.*none or imagenet"
    with pytest.raises(ValueError, match=expected):
        build_model("mobilenetv2", 32, str(saved))
    with pytest.raises(ValueError, match="use_metadata True"):
        build_model("small_cnn", 32, str(saved), use_metadata=True)
    (tmp_path / "notes.weights.h5").write_text("not weights")
    with pytest.raises(ValueError, match="notes.weights.h5 is not a readable HDF5 weights file"):
        build_model("small_cnn", 32, str(tmp_path / "notes.weights.h5"))
