import keras
import numpy as np

from pipeline.explain import box_to_model_coordinates
from pipeline.gradcam import grad_cam, last_feature_map_layer, overlay_heatmap, peak_in_box
from pipeline.models import build_model


def bright_spot_model(size=32):
    """Class score grows with the brightness the conv layer sees, so Grad-CAM
    must peak where the image is bright."""
    inputs = keras.Input((size, size, 1))
    features = keras.layers.Conv2D(1, 3, padding="same", name="features",
                                   kernel_initializer="ones", bias_initializer="zeros")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Activation("relu")(features))
    outputs = keras.layers.Dense(14, activation="sigmoid", kernel_initializer="ones",
                                 bias_initializer=keras.initializers.Constant(-5.0))(pooled)
    return keras.Model(inputs, outputs)


def test_heatmap_peaks_at_the_evidence():
    model = bright_spot_model()
    images = np.zeros((3, 32, 32, 1), np.float32)
    spots = [(5, 5), (20, 10), (28, 27)]
    for image, (y, x) in zip(images, spots):
        image[y - 2 : y + 3, x - 2 : x + 3] = 1.0
    heatmaps = grad_cam(model, images, np.array([0, 3, 13]), layer_name="features")
    assert heatmaps.shape == (3, 32, 32)
    assert heatmaps.max() <= 1.0 + 1e-6 and heatmaps.min() >= 0.0
    for heatmap, (y, x) in zip(heatmaps, spots):
        assert peak_in_box(heatmap, (x - 3, y - 3, 6, 6))
        far = (heatmap[y - 2 : y + 3, x - 2 : x + 3].mean(), heatmap[(y + 16) % 32, (x + 16) % 32])
        assert far[0] > 0.5 > far[1]


def test_batched_equals_one_at_a_time():
    model = build_model("small_cnn", 32, "none")
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype(np.float32)
    classes = np.array([1, 2, 3, 4])
    batched = grad_cam(model, images, classes)
    single = np.concatenate([grad_cam(model, images[i : i + 1], classes[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_last_feature_map_of_each_backbone():
    assert last_feature_map_layer(build_model("small_cnn", 32)) == "block3_relu"
    assert last_feature_map_layer(build_model("densenet121", 64)) == "relu"


def test_overlay_and_box_mapping():
    picture = overlay_heatmap(np.zeros((16, 16, 1), np.float32), np.ones((16, 16)))
    assert picture.shape == (16, 16, 3) and picture.dtype == np.uint8
    # A 2048x1024 original, centre-cropped to 1024x1024, then resized to 256.
    assert box_to_model_coordinates((512, 0, 1024, 1024), (2048, 1024), 256, "crop") == (0.0, 0.0, 256.0, 256.0)
