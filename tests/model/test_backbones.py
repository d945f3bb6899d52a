"""A backbone is one record (pipeline.model.backbones): registering a toy one
makes it trainable, explainable, checked at a stage's start and listed in the
docs' table, with no other change."""
from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.core.config import ConfigError
from pipeline.model import backbones
from pipeline.model.backbones import BACKBONES, Backbone, backbone_table, check_backbone_settings
from tests.conftest import NO_AUGMENT, PROJECT_ROOT, section_settings

DOCS = PROJECT_ROOT / "docs" / "training.md"


def toy_features(inputs, imagenet_file):
    """Two convolutions: the whole of a toy backbone."""
    from keras import layers

    x = layers.Conv2D(8, 3, strides=2, padding="same", name="toy_conv1")(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same", name="toy_conv2")(x)
    return layers.Activation("relu", name="toy_relu")(x)


@pytest.fixture
def toy_backbone(monkeypatch):
    record = Backbone("toy_cnn", toy_features, "toy_relu", "a test's", min_image_size=16)
    monkeypatch.setitem(BACKBONES, record.name, record)  # what backbones.register does, undone after the test
    return record


def test_a_toy_backbone_registered_in_one_record_trains_and_explains(toy_backbone, tiny_shards, tmp_path):
    from pipeline.core.model_io import load_keras_model
    from pipeline.explain.gradcam import grad_cam, resolve_layer
    from pipeline.model.architectures import build_model
    from pipeline.model.train import train_model

    model = build_model("toy_cnn", 32, "none", batchnorm_momentum=0.9)
    settings = section_settings("train", batch_size=4, epochs=1, augment=NO_AUGMENT)
    result = train_model(model, tiny_shards, tmp_path / "model.keras", settings, seed=0)
    assert result["summary"]["epochs"] == 1 and np.isfinite(result["history"]["loss"]).all()
    trained = load_keras_model(tmp_path / "model.keras")
    layer = resolve_layer(trained, None)
    assert layer == toy_backbone.gradcam_layer
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    heatmaps = grad_cam(trained, images, np.array([0, 9]), layer)
    assert heatmaps.shape == (2, 32, 32) and np.isfinite(heatmaps).all() and heatmaps.max() <= 1 + 1e-6


def test_a_toy_backbone_is_checked_and_listed(toy_backbone):
    assert "| `toy_cnn` | a test's | 16 px | none | - | `toy_relu` |" in backbone_table()
    with pytest.raises(ConfigError, match="preprocess.image_size is 8; allowed: at least 16 px for train.backbone "
                                          "toy_cnn"):
        check_backbone_settings("toy_cnn", 8, "none")
    with pytest.raises(ConfigError, match="train.backbone toy_cnn has no ImageNet weights"):
        check_backbone_settings("toy_cnn", 32, "imagenet")


def test_the_docs_table_is_the_records():
    text = DOCS.read_text()
    listed = re.search(r"<!-- backbones table: python -m pipeline.model.backbones -->\n(.*?)\n<!-- end of backbones",
                       text, re.S)
    assert listed and listed.group(1) == backbone_table(), \
        "docs/training.md's backbone table is out of date: paste `python -m pipeline.model.backbones` there"


def test_a_record_with_half_its_imagenet_facts_is_refused():
    with pytest.raises(ValueError, match="imagenet_input and imagenet_weights go together"):
        backbones.register(Backbone("half", toy_features, "toy_relu", "x", imagenet_input="torch"))
    assert "half" not in BACKBONES
