"""Model definitions: a backbone, its input normalisation and a 14-way sigmoid head.

Input is always (size, size, 1) float32 grey values 0..255 (pipeline.records.imaging).
Grayscale-to-backbone conversion and normalisation live inside the model, so
a saved or registered model is self-contained.

Every model ends in the same layers, which Grad-CAM relies on: the backbone's
last 4-D feature map, then "pool" (global average), optional "dropout", and
the Dense sigmoid head "findings" (its kernel gives the class logits).

With use_metadata the model has two inputs, {"image", "metadata"}
(pipeline.core.patient): the metadata passes through a small Dense layer
("metadata_dense") and is concatenated with the pooled image features
("fuse") before the head, so the findings see both.

Backbones: keras.applications (densenet121, resnet50, vgg16, mobilenetv2,
efficientnetb0) and our own definitions of resnet18, alexnet and small_cnn,
which Keras does not ship (and which have no ImageNet weights here).
"""
from __future__ import annotations

import math
from pathlib import Path

import keras
from keras import layers

from pipeline.core.labels import NUM_FINDINGS
from pipeline.core.patient import IMAGE_INPUT, NUM_PATIENT_FEATURES, PATIENT_INPUT
from pipeline.model.pretrained import fetch_imagenet_weights, imagenet_weights_source

# keras.applications constructors by our param name.
KERAS_BACKBONES = {
    "densenet121": keras.applications.DenseNet121,
    "resnet50": keras.applications.ResNet50,
    "mobilenetv2": keras.applications.MobileNetV2,
    "efficientnetb0": keras.applications.EfficientNetB0,
    "vgg16": keras.applications.VGG16,
}
# ImageNet statistics (RGB), for backbones started from ImageNet weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Caffe-style means (BGR order; our three channels are identical, so order is moot).
CAFFE_MEAN = (103.939, 116.779, 123.68)
# How each keras.applications backbone's ImageNet weights expect their input
# (keras.applications.<name>.preprocess_input): "torch" = 0..1 then ImageNet
# mean/std, "caffe" = 0..255 minus channel means, "tf" = -1..1, "raw" = 0..255
# (EfficientNet rescales and normalises inside itself; see normalise for the
# one scaling Keras leaves out of a model built without weights="imagenet").
IMAGENET_INPUT_MODE = {
    "densenet121": "torch",
    "resnet50": "caffe",
    "vgg16": "caffe",
    "mobilenetv2": "tf",
    "efficientnetb0": "raw",
}
# The smallest input each of our own backbones gives a non-empty feature map for.
MIN_IMAGE_SIZE = {"alexnet": 32, "resnet18": 32, "small_cnn": 8}
# Trained from the start, also while a pretrained backbone is frozen for warm-up.
HEAD_LAYERS = ("pool", "metadata_dense", "fuse", "dropout", "findings")
# Width of the metadata embedding: three inputs need few units, and a small
# embedding cannot drown the 1,024 DenseNet features it is concatenated with.
METADATA_UNITS = 16


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


OWN_BACKBONES = {"resnet18": resnet18, "alexnet": alexnet, "small_cnn": small_cnn}
BACKBONES = (*KERAS_BACKBONES, *OWN_BACKBONES)


def normalise(inputs: keras.KerasTensor, weights: str, backbone: str = "densenet121") -> keras.KerasTensor:
    """Grey values 0..255 to what the backbone expects. The one place where
    grayscale meets the backbone: one channel from scratch, three identical
    channels for ImageNet weights."""
    if weights == "none":
        if backbone == "efficientnetb0":
            # EfficientNet rescales by 1/255 inside itself: feed it 0..255.
            return layers.Identity(name="normalise")(inputs)
        # From scratch: one channel, roughly zero mean and unit spread.
        return layers.Rescaling(1 / 63.75, offset=-2.0, name="normalise")(inputs)
    rgb = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    mode = IMAGENET_INPUT_MODE.get(backbone, "torch")
    if mode == "caffe":
        return layers.Normalization(mean=list(CAFFE_MEAN), variance=[1.0, 1.0, 1.0], name="normalise")(rgb)
    if mode == "tf":
        return layers.Rescaling(1 / 127.5, offset=-1.0, name="normalise")(rgb)
    if mode == "raw":
        # EfficientNet rescales (1/255) and normalises (ImageNet mean and
        # variance, read from the weights file) inside itself, then Keras adds a
        # further per-channel 1/sqrt(std) scaling, but only in a model built with
        # weights="imagenet". We build with weights=None and load the cached file
        # (pipeline.model.pretrained), so that scaling is done here, before the model,
        # in the equivalent form x' = 255 m + (x - 255 m) / sqrt(std).
        factors = [1 / math.sqrt(s) for s in IMAGENET_STD]
        offsets = [255 * m * (1 - f) for m, f in zip(IMAGENET_MEAN, factors)]
        return layers.Rescaling(factors, offset=offsets, name="normalise")(rgb)
    scaled = layers.Rescaling(1 / 255.0, name="to_unit")(rgb)
    return layers.Normalization(
        mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD], name="normalise"
    )(scaled)


def imagenet_weights_name(backbone: str, image_size: int) -> str:
    """The file name keras.applications downloads for `backbone` without its top."""
    return imagenet_weights_source(backbone, image_size).file_name


def imagenet_weights_file(backbone: str, image_size: int) -> Path:
    """The ImageNet weights file for `backbone`, from Keras's cache or downloaded
    into it as Keras would (pipeline.model.pretrained): done when the model is
    built, so an offline machine fails before any training, in one line."""
    if backbone not in KERAS_BACKBONES:
        raise ValueError(
            f"train.weights: imagenet has no weights for train.backbone {backbone!r} (our own definition); "
            f"use weights: none or a path, or one of {', '.join(KERAS_BACKBONES)}"
        )
    return fetch_imagenet_weights(imagenet_weights_source(backbone, image_size))


def check_image_size(backbone: str, image_size: int) -> None:
    minimum = MIN_IMAGE_SIZE.get(backbone, 32)
    if image_size < minimum:
        raise ValueError(f"preprocess.image_size {image_size} is too small for train.backbone {backbone!r} "
                         f"(at least {minimum} px)")


def assemble_model(
    backbone: str,
    image_size: int,
    layout: str = "none",
    dropout: float = 0.0,
    use_metadata: bool = False,
    imagenet_file: Path | None = None,
) -> keras.Model:
    """The classifier's graph. layout: "none" (one channel, from scratch) or
    "imagenet" (three identical channels with the backbone's ImageNet input
    scaling, the backbone's weights read from imagenet_file when given)."""
    inputs = keras.Input((image_size, image_size, 1), name=IMAGE_INPUT)
    x = normalise(inputs, layout, backbone)
    if backbone in OWN_BACKBONES:
        features = OWN_BACKBONES[backbone](x)
    else:
        # input_tensor builds the backbone's layers into this graph (not a nested
        # model), so Grad-CAM can reach its last feature map by layer name.
        base = KERAS_BACKBONES[backbone](include_top=False, weights=None, input_tensor=x)
        if imagenet_file is not None:
            # What Keras does with weights="imagenet", from the file fetched
            # and hash-checked before (pipeline.model.pretrained).
            base.load_weights(imagenet_file)
        features = base.output
    pooled = layers.GlobalAveragePooling2D(name="pool", dtype="float32")(features)
    graph_inputs = inputs
    if use_metadata:
        metadata = keras.Input((NUM_PATIENT_FEATURES,), name=PATIENT_INPUT)
        embedded = layers.Dense(METADATA_UNITS, activation="relu", name="metadata_dense", dtype="float32")(metadata)
        pooled = layers.Concatenate(name="fuse", dtype="float32")([pooled, embedded])
        graph_inputs = {IMAGE_INPUT: inputs, PATIENT_INPUT: metadata}
    if dropout > 0:
        pooled = layers.Dropout(dropout, name="dropout", dtype="float32")(pooled)
    outputs = layers.Dense(NUM_FINDINGS, activation="sigmoid", name="findings", dtype="float32")(pooled)
    return keras.Model(graph_inputs, outputs, name=f"chestxray_{backbone}{'_metadata' if use_metadata else ''}")


def saved_weight_count(path: Path) -> int | None:
    """The number of weight arrays in an HDF5 weights file (Keras's .weights.h5
    or the legacy .h5), or None for another format."""
    import h5py

    if path.suffix != ".h5":
        return None
    arrays: list[str] = []
    try:
        with h5py.File(path, "r") as file:
            file.visititems(lambda name, item: arrays.append(name) if isinstance(item, h5py.Dataset) else None)
    except OSError as exc:
        raise ValueError(f"train.weights: {path} is not a readable HDF5 weights file ({exc})") from exc
    return len(arrays)


def model_from_weights_file(
    path: Path, backbone: str, image_size: int, dropout: float = 0.0, use_metadata: bool = False
) -> keras.Model:
    """A model with the whole-model weights saved from one of ours: one started
    from scratch (one channel) or from ImageNet weights (three channels); the
    input layout the file fits is the one built."""
    layouts = ("none", "imagenet") if backbone in KERAS_BACKBONES else ("none",)
    saved = saved_weight_count(path)
    problems = []
    for layout in layouts:
        model = assemble_model(backbone, image_size, layout, dropout, use_metadata)
        # Keras skips parts of a file that do not match, with a warning only, and
        # keeps their fresh weights: a different count means the file is not this model's.
        if saved is not None and saved != len(model.weights):
            problems.append(f"{layout} layout: the file holds {saved} weights, the model has {len(model.weights)}")
            continue
        try:
            model.load_weights(path)
            return model
        except (ValueError, KeyError) as exc:
            problems.append(f"{layout} layout: {str(exc).splitlines()[0][:200]}")
    raise ValueError(
        f"train.weights: {path} does not fit a {backbone} model at {image_size} px with dropout {dropout} and "
        f"use_metadata {use_metadata} (the weights must come from a model with these settings), in the input "
        f"layout(s) {' or '.join(layouts)}: {'; '.join(problems)}"
    )


def build_model(
    backbone: str = "densenet121",
    image_size: int = 320,
    weights: str = "none",
    dropout: float = 0.0,
    batchnorm_momentum: float | None = None,
    use_metadata: bool = False,
) -> keras.Model:
    """The classifier; outputs 14 probabilities in FINDINGS order.

    use_metadata: a second input, "metadata" (pipeline.core.patient), fused with
    the pooled image features before the head; the model then takes a dict
    {"image": ..., "metadata": ...}.

    `weights`: "none", "imagenet" (Keras's file, cached or downloaded) or a path
    to a weights file saved from one of our models (model_from_weights_file).
    Under a mixed-precision policy the head ("pool" onwards) stays float32, so
    the probabilities and Grad-CAM's logits are computed in float32.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"train.backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    check_image_size(backbone, image_size)
    if weights in ("none", "imagenet"):
        imagenet_file = imagenet_weights_file(backbone, image_size) if weights == "imagenet" else None
        model = assemble_model(backbone, image_size, weights, dropout, use_metadata, imagenet_file)
    else:
        weights_file = Path(weights)
        if not weights_file.is_file():
            raise FileNotFoundError(f"train.weights: {weights_file} not found")
        model = model_from_weights_file(weights_file, backbone, image_size, dropout, use_metadata)
    if batchnorm_momentum is not None:
        set_batchnorm_momentum(model, batchnorm_momentum)
    return model


def set_backbone_trainable(model: keras.Model, trainable: bool) -> int:
    """Freeze (or unfreeze) everything but the head, for a warm-up that trains
    the head on top of pretrained features. Returns the number of trainable
    weights after. Frozen BatchNorm layers run in inference mode (Keras 3)."""
    for layer in model.layers:
        if layer.name not in HEAD_LAYERS:
            layer.trainable = trainable
    return len(model.trainable_weights)


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    """Keras's 0.99 needs thousands of steps before the moving statistics used
    at inference settle; a short from-scratch run needs a faster average."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum
