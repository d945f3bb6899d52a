"""Model definitions: a backbone, its input normalisation and a 14-way sigmoid head.

Input is always (size, size, 1) float32 grey values 0..255 (pipeline.imaging).
Grayscale-to-backbone conversion and normalisation live inside the model, so
a saved or registered model is self-contained.
"""
from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from pipeline.labels import NUM_FINDINGS

# keras.applications constructors by our param name.
KERAS_BACKBONES = {
    "densenet121": keras.applications.DenseNet121,
    "resnet50": keras.applications.ResNet50,
    "mobilenetv2": keras.applications.MobileNetV2,
    "efficientnetb0": keras.applications.EfficientNetB0,
}
BACKBONES = (*KERAS_BACKBONES, "small_cnn")
# ImageNet statistics (RGB), for backbones started from ImageNet weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def small_cnn(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """A few conv blocks: for tests and quick experiments, not for results."""
    x = inputs
    for i, filters in enumerate((16, 32, 64, 128)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.Activation("relu", name=f"block{i}_relu")(x)
        if i < 3:
            x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return x


def normalise(inputs: keras.KerasTensor, weights: str) -> keras.KerasTensor:
    """Grey values 0..255 to what the backbone expects."""
    if weights == "none":
        # From scratch: one channel, roughly zero mean and unit spread.
        return layers.Rescaling(1 / 63.75, offset=-2.0, name="normalise")(inputs)
    # Pretrained: three identical channels with ImageNet statistics.
    rgb = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    scaled = layers.Rescaling(1 / 255.0, name="to_unit")(rgb)
    return layers.Normalization(
        mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD], name="normalise"
    )(scaled)


def build_model(
    backbone: str = "densenet121",
    image_size: int = 320,
    weights: str = "none",
    dropout: float = 0.0,
    batchnorm_momentum: float | None = None,
) -> keras.Model:
    """The classifier; outputs 14 probabilities in FINDINGS order.

    `weights`: "none", "imagenet" (Keras's cached file, see README) or a path
    to a weights file for the whole model.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"train.backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    weights_file = None
    if weights not in ("none", "imagenet"):
        weights_file = Path(weights)
        if not weights_file.is_file():
            raise FileNotFoundError(f"train.weights: {weights_file} not found")
    inputs = keras.Input((image_size, image_size, 1), name="image")
    backbone_weights = "imagenet" if weights == "imagenet" else "none"
    x = normalise(inputs, backbone_weights)
    if backbone == "small_cnn":
        features = small_cnn(x)
    else:
        # input_tensor builds the backbone's layers into this graph (not a nested
        # model), so Grad-CAM can reach its last feature map by layer name.
        base = KERAS_BACKBONES[backbone](
            include_top=False,
            weights="imagenet" if backbone_weights == "imagenet" else None,
            input_tensor=x,
        )
        features = base.output
    pooled = layers.GlobalAveragePooling2D(name="pool")(features)
    if dropout > 0:
        pooled = layers.Dropout(dropout, name="dropout")(pooled)
    outputs = layers.Dense(NUM_FINDINGS, activation="sigmoid", name="findings", dtype="float32")(pooled)
    model = keras.Model(inputs, outputs, name=f"chestxray_{backbone}")
    if batchnorm_momentum is not None:
        set_batchnorm_momentum(model, batchnorm_momentum)
    if weights_file is not None:
        model.load_weights(weights_file)
    return model


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    """Keras's 0.99 needs thousands of steps before the moving statistics used
    at inference settle; a short from-scratch run needs a faster average."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


def load_model(path: Path | str) -> keras.Model:
    """A model saved by the train stage (no compile state needed for inference)."""
    return keras.models.load_model(path, compile=False)
