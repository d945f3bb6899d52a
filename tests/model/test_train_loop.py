"""The training loop's knobs: focal loss, warm-up, early stopping, ImageNet cache, strategy, precision."""
import dataclasses
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.model.architectures import build_model, set_backbone_trainable
from pipeline.model.train import (
    configure_mixed_precision,
    distribution_strategy,
    focal_loss,
    make_loss,
    train_model,
    training_phases,
    weighted_binary_crossentropy,
)
from tests.conftest import NO_AUGMENT, section_settings


def test_focal_loss_matches_a_hand_computation():
    weight = np.ones(14, np.float32)
    weight[0] = 3.0
    y_true = np.zeros((1, 14), np.float32)
    y_true[0, 0] = 1.0
    y_pred = np.full((1, 14), 0.5, np.float32)
    y_pred[0, 0], y_pred[0, 1] = 0.8, 0.3
    # positive finding 0: -3 * 0.2^2 * ln 0.8; negative finding 1: -0.3^2 * ln 0.7;
    # the other 12 negatives at p = 0.5: -0.5^2 * ln 0.5 each; mean over 14.
    expected = (-3 * 0.2**2 * math.log(0.8) - 0.3**2 * math.log(0.7) - 12 * 0.25 * math.log(0.5)) / 14
    value = float(focal_loss(weight, gamma=2.0)(tf.constant(y_true), tf.constant(y_pred))[0])
    assert value == pytest.approx(expected, rel=1e-5)


def test_focal_with_gamma_zero_is_weighted_bce():
    weight = np.linspace(1, 5, 14).astype(np.float32)
    y_true = tf.constant(np.random.default_rng(0).integers(0, 2, (3, 14)), tf.float32)
    y_pred = tf.constant(np.random.default_rng(1).uniform(0.05, 0.95, (3, 14)), tf.float32)
    np.testing.assert_allclose(focal_loss(weight, 0.0)(y_true, y_pred),
                               weighted_binary_crossentropy(weight)(y_true, y_pred), rtol=1e-6)


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="train.loss.*'hinge'"):
        make_loss(dataclasses.replace(section_settings("train"), loss="hinge"), np.ones(14, np.float32))


def test_warmup_only_for_pretrained_weights():
    assert training_phases(4, 1, pretrained=True) == [(0, 1, False), (1, 4, True)]
    assert training_phases(4, 1, pretrained=False) == [(0, 4, True)]
    assert training_phases(2, 5, pretrained=True) == [(0, 2, False)]


def test_warmup_freezes_the_backbone_then_unfreezes_it(tiny_shards, tmp_path):
    # "Pretrained" offline: a small_cnn's saved weights loaded through train.weights: path.
    saved = tmp_path / "pretrained.weights.h5"
    build_model("small_cnn", 32, "none").save_weights(saved)
    strategy = distribution_strategy()
    with strategy.scope():
        model = build_model("small_cnn", 32, str(saved))
    all_weights = len(model.trainable_weights)
    settings = section_settings("train", batch_size=4, epochs=2, learning_rate=1e-3, weights=str(saved),
                                warmup_epochs=1, lr_schedule="constant", augment=NO_AUGMENT)
    result = train_model(model, tiny_shards, tmp_path / "model.keras", settings, seed=0, strategy=strategy)
    # warm-up: the head's kernel and bias only; then everything again
    assert result["trainable_weights_per_phase"] == [2, all_weights]
    assert result["summary"]["warmup_epochs"] == 1 and result["summary"]["epochs"] == 2
    assert len(model.trainable_weights) == all_weights
    assert set_backbone_trainable(model, False) == 2


def test_early_stopping_stops_when_val_auc_stalls(tiny_shards, tmp_path):
    # Learning rate 0 and frozen BatchNorm statistics: val AUC never improves,
    # so patience 1 stops after the second epoch.
    model = build_model("small_cnn", 32, "none", batchnorm_momentum=1.0)
    # replace, not section_settings: params.yaml refuses a learning rate of 0
    settings = dataclasses.replace(section_settings("train", batch_size=4, epochs=6, early_stopping_patience=1,
                                                    lr_schedule="constant", augment=NO_AUGMENT), learning_rate=0.0)
    result = train_model(model, tiny_shards, tmp_path / "model.keras", settings, seed=0)
    assert result["summary"]["epochs"] == 2 < settings.epochs
    assert result["summary"]["stopped_early"] is True
    assert len(result["history"]["loss"]) == 2 and (tmp_path / "model.keras").is_file()


def test_missing_imagenet_weights_name_the_file_and_the_cache(tmp_path, monkeypatch):
    from pipeline.model import pretrained
    from tests.conftest import free_port

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # A closed port: the download attempt fails at once, with or without network.
    monkeypatch.setattr(pretrained, "KERAS_APPLICATIONS_URL", f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(FileNotFoundError) as raised:
        build_model("densenet121", 64, "imagenet")
    message = str(raised.value)
    assert "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message
    with pytest.raises(FileNotFoundError, match="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5"):
        build_model("mobilenetv2", 128, "imagenet")


def test_efficientnet_imagenet_input_scaled_as_keras_scales_it(tmp_path, monkeypatch):
    """Keras's EfficientNetB0 built with weights="imagenet" computes, before its
    first convolution, ((x / 255 - mean) / std) / sqrt(std) per channel. Ours is
    built with weights=None and loads the cached file; its stem must see the same.
    The cached file here is a stand-in with ImageNet's normalisation statistics."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from pipeline.model.architectures import IMAGENET_MEAN, IMAGENET_STD, assemble_model
    from pipeline.model.backbones import imagenet_weights_source

    size = 32
    stand_in = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(size, size, 3))
    normalization = next(layer for layer in stand_in.layers if isinstance(layer, keras.layers.Normalization))
    normalization.set_weights(
        [np.array(IMAGENET_MEAN), np.square(IMAGENET_STD), np.array(1)])
    (tmp_path / "models").mkdir()
    with h5py.File(tmp_path / "models" / imagenet_weights_source("efficientnetb0", size).file_name, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, stand_in)
    # The stand-in is not Keras's file (its MD5 differs), so it is loaded directly, not through the cache.
    model = assemble_model("efficientnetb0", size, "imagenet", imagenet_file=tmp_path / "models" /
                           imagenet_weights_source("efficientnetb0", size).file_name)
    stem_input = keras.Model(model.input, model.get_layer("stem_conv_pad").input)
    grey = np.random.default_rng(0).uniform(0, 255, (2, size, size, 1)).astype(np.float32)
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    expected = ((grey / 255.0 - mean) / std) / np.sqrt(std)
    np.testing.assert_allclose(stem_input(grey).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_efficientnet_from_scratch_is_rescaled_once():
    model = build_model("efficientnetb0", 32, "none")
    stem_input = keras.Model(model.input, model.get_layer("stem_conv_pad").input)
    grey = np.full((1, 32, 32, 1), 255.0, np.float32)
    np.testing.assert_allclose(stem_input(grey).numpy(), 1.0, rtol=1e-6)  # 0..255 -> 0..1, not 0.004


@pytest.mark.parametrize("backbone", ["resnet18", "alexnet", "small_cnn"])
def test_imagenet_for_our_own_backbones_is_an_error(backbone):
    with pytest.raises(ValueError, match=f"imagenet has no weights for train.backbone '{backbone}'"):
        build_model(backbone, 64, "imagenet")


def test_alexnet_needs_32_px():
    with pytest.raises(ValueError, match="image_size is 24; allowed: at least 32 px for train.backbone alexnet"):
        build_model("alexnet", 24, "none")


def test_strategy_here_is_the_default_one(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribution_strategy() is tf.distribute.get_strategy()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"index": 0}}))
    assert distribution_strategy().num_replicas_in_sync == 1


def test_mixed_precision_keeps_the_head_float32():
    assert configure_mixed_precision("auto") is False  # no GPU here
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        model = build_model("small_cnn", 32, "none")
        assert model.layers[-1].compute_dtype == "float32" and model.layers[-1].input.dtype == "float32"
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError, match="train.mixed_precision.*'yes'"):
        configure_mixed_precision("yes")
