import keras
import numpy as np
import pytest

from pipeline.explain.explanations import box_to_model_coordinates
from pipeline.explain.gradcam import (
    METHODS,
    feature_map_shape,
    grad_cam,
    last_feature_map_layer,
    overlay_heatmap,
    random_grids,
    resolve_layer,
    to_heatmaps,
)
from pipeline.explain.localisation import peak_in_box
from pipeline.model.architectures import build_model
from pipeline.model.backbones import BACKBONES


def bright_spot_model(size=32, channels=1):
    """Class score grows with the brightness the conv layer sees, so a heatmap
    must peak where the image is bright."""
    inputs = keras.Input((size, size, 1))
    features = keras.layers.Conv2D(channels, 3, padding="same", name="features",
                                   kernel_initializer="ones", bias_initializer="zeros")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Activation("relu")(features))
    outputs = keras.layers.Dense(14, activation="sigmoid", kernel_initializer="ones",
                                 bias_initializer=keras.initializers.Constant(-5.0))(pooled)
    return keras.Model(inputs, outputs)


def spot_images(spots, size=32, value=1.0):
    images = np.zeros((len(spots), size, size, 1), np.float32)
    for image, (y, x) in zip(images, spots):
        image[y - 2 : y + 3, x - 2 : x + 3] = value
    return images


@pytest.mark.parametrize("method", METHODS)
def test_heatmap_peaks_at_the_evidence(method):
    model = bright_spot_model()
    spots = [(5, 5), (20, 10), (28, 27)]
    heatmaps = grad_cam(model, spot_images(spots), np.array([0, 3, 13]), layer_name="features", method=method)
    assert heatmaps.shape == (3, 32, 32)
    assert heatmaps.max() <= 1.0 + 1e-6 and heatmaps.min() >= 0.0
    for heatmap, (y, x) in zip(heatmaps, spots):
        assert peak_in_box(heatmap, (x - 3, y - 3, 6, 6))
        far = (heatmap[y - 2 : y + 3, x - 2 : x + 3].mean(), heatmap[(y + 16) % 32, (x + 16) % 32])
        assert far[0] > 0.5 > far[1]


def test_a_saturated_prediction_still_has_a_heatmap():
    # The spot drives the logit far past where float32 sigmoid rounds to 1.0;
    # a map from the probability's gradient would be empty.
    model = bright_spot_model()
    images = spot_images([(16, 16)], value=200.0)
    assert model.predict_on_batch(images)[0, 0] == 1.0
    heatmap = grad_cam(model, images, np.array([0]), "features")[0]
    assert heatmap.max() == pytest.approx(1.0) and peak_in_box(heatmap, (13, 13, 6, 6))


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_one_at_a_time(method):
    model = build_model("small_cnn", 32, "none")
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype(np.float32)
    classes = np.array([1, 2, 3, 4])
    batched = grad_cam(model, images, classes, None, method)
    single = np.concatenate([grad_cam(model, images[i : i + 1], classes[i : i + 1], None, method)
                             for i in range(4)])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_gradcam_plus_plus_is_a_different_map_in_range():
    model = build_model("small_cnn", 32, "none")
    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 1)).astype(np.float32)
    classes = np.array([0, 5, 9])
    plain = grad_cam(model, images, classes)
    plus = grad_cam(model, images, classes, method="gradcam++")
    assert plus.shape == plain.shape == (3, 32, 32)
    assert plus.min() >= 0.0 and plus.max() == pytest.approx(1.0, abs=1e-5)
    assert np.abs(plus - plain).max() > 0.1


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="gradcam, gradcam\\+\\+"):
        grad_cam(bright_spot_model(), np.zeros((1, 32, 32, 1)), np.array([0]), method="cam")


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_gets_a_heatmap(backbone):
    model = build_model(backbone, 32)
    layer = last_feature_map_layer(model)
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    for method in METHODS:
        heatmaps = grad_cam(model, images, np.array([0, 13]), method=method)
        assert heatmaps.shape == (2, 32, 32) and 0.0 <= heatmaps.min() <= heatmaps.max() <= 1.0 + 1e-6
    assert len(feature_map_shape(model, layer)) == 2
    assert layer == BACKBONES[backbone].gradcam_layer  # the record names the layer the docs list


def test_layer_is_automatic_or_checked_by_name():
    model = build_model("small_cnn", 32)
    assert resolve_layer(model, None) == last_feature_map_layer(model) == "block3_relu"
    assert resolve_layer(model, "block2_relu") == "block2_relu"
    assert feature_map_shape(model, "block2_relu") == (8, 8)
    with pytest.raises(ValueError, match="'no_such_layer'.*not a layer.*block3_relu, block3_bn"):
        resolve_layer(model, "no_such_layer")
    with pytest.raises(ValueError, match="'pool'.*no 4-D"):
        resolve_layer(model, "pool")
    assert last_feature_map_layer(build_model("densenet121", 64)) == "relu"
    # Not VGG16's trailing block5_pool: its last convolution, at twice the resolution.
    vgg = build_model("vgg16", 64)
    assert last_feature_map_layer(vgg) == "block5_conv3"
    assert feature_map_shape(vgg, "block5_conv3") == (4, 4) and feature_map_shape(vgg, "block5_pool") == (2, 2)


def test_random_baseline_is_seeded_and_shaped_like_a_heatmap():
    first, again, other = random_grids(3, (4, 4), 7), random_grids(3, (4, 4), 7), random_grids(3, (4, 4), 8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    maps = to_heatmaps(first, (32, 32))
    assert maps.shape == (3, 32, 32) and maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    # bilinear from a 4x4 grid: neighbouring pixels differ little, as in a real heatmap
    assert np.abs(np.diff(maps, axis=2)).max() < 0.2


def test_overlay_and_box_mapping():
    picture = overlay_heatmap(np.zeros((16, 16, 1), np.float32), np.ones((16, 16)))
    assert picture.shape == (16, 16, 3) and picture.dtype == np.uint8
    # A 2048x1024 original, centre-cropped to 1024x1024, then resized to 256.
    assert box_to_model_coordinates((512, 0, 1024, 1024), (2048, 1024), 256, "crop") == (0.0, 0.0, 256.0, 256.0)
    # ... or padded to 2048x2048: the box keeps its place, a quarter of the size
    padded = box_to_model_coordinates((512, 0, 1024, 1024), (2048, 1024), 256, "pad")
    assert padded == (64.0, 64.0, 128.0, 128.0)
