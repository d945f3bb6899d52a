"""Our own backbone definitions, which Keras does not ship (and which have no
ImageNet weights here): ResNet-18, AlexNet and a small CNN for tests and quick
runs. Each maps the normalised input to its last 4-D feature map; their
records are in pipeline.model.backbones."""
from __future__ import annotations

import keras
from keras import layers


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


def conv_bn_relu(x, filters: int, kernel: int, strides: int, name: str, relu: bool = True):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def basic_block(x, filters: int, strides: int, name: str):
    """ResNet basic block (He et al. 2016): two 3x3 convs and the identity, or a
    strided 1x1 projection when the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn_relu(x, filters, 1, strides, f"{name}_proj", relu=False)
    y = conv_bn_relu(x, filters, 3, strides, f"{name}_1")
    y = conv_bn_relu(y, filters, 3, 1, f"{name}_2", relu=False)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet18(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """ResNet-18: 7x7/2 stem, 3x3/2 max pool, four stages of two basic blocks
    (64, 128, 256, 512 filters; stages 2-4 start with stride 2). Output stride 32."""
    x = conv_bn_relu(inputs, 64, 7, 2, "stem")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            strides = 2 if stage > 1 and block == 0 else 1
            x = basic_block(x, filters, strides, f"stage{stage}_block{block}")
    return x


def alexnet(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """AlexNet's five convolutions and two max pools (Krizhevsky et al. 2012, the
    single-tower filter counts of torchvision's version). The third max pool and
    the fully connected layers are replaced by the global-pooled head, so the last
    feature map keeps some resolution for Grad-CAM (19x19 at 320 px, 3x3 at 64 px).
    No BatchNorm, as in the original; the input must be at least 32 px."""
    x = layers.Conv2D(64, 11, strides=4, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = layers.Conv2D(192, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv4")(x)
    return layers.Conv2D(256, 3, padding="same", activation="relu", name="conv5")(x)
