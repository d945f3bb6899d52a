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

What differs between backbones (their constructor, ImageNet input scaling,
weights file, smallest input, Grad-CAM layer) is in their records,
pipeline.model.backbones; nothing here is keyed by a backbone's name.
"""
from __future__ import annotations

import math
from pathlib import Path

import keras
from keras import layers

from pipeline.core.faults import first_line
from pipeline.core.labels import NUM_FINDINGS
from pipeline.core.patient import IMAGE_INPUT, NUM_PATIENT_FEATURES, PATIENT_INPUT
from pipeline.model.backbones import Backbone, backbone_named, check_backbone_settings, imagenet_weights_source
from pipeline.model.pretrained import fetch_imagenet_weights

# ImageNet statistics (RGB), for backbones started from ImageNet weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Caffe-style means (BGR order; our three channels are identical, so order is moot).
CAFFE_MEAN = (103.939, 116.779, 123.68)
# Trained from the start, also while a pretrained backbone is frozen for warm-up.
HEAD_LAYERS = ("pool", "metadata_dense", "fuse", "dropout", "findings")
# Width of the metadata embedding: three inputs need few units, and a small
# embedding cannot drown the 1,024 DenseNet features it is concatenated with.
METADATA_UNITS = 16


def normalise(inputs: keras.KerasTensor, weights: str, backbone: Backbone) -> keras.KerasTensor:
    """Grey values 0..255 to what the backbone expects. The one place where
    grayscale meets the backbone: one channel from scratch, three identical
    channels for ImageNet weights."""
    if weights == "none":
        if backbone.from_scratch_input == "raw":
            # EfficientNet rescales by 1/255 inside itself: feed it 0..255.
            return layers.Identity(name="normalise")(inputs)
        # From scratch: one channel, roughly zero mean and unit spread.
        return layers.Rescaling(1 / 63.75, offset=-2.0, name="normalise")(inputs)
    rgb = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    mode = backbone.imagenet_input
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


def imagenet_weights_file(backbone: str, image_size: int) -> Path:
    """The ImageNet weights file for `backbone`, from Keras's cache or downloaded
    into it as Keras would (pipeline.model.pretrained): done when the model is
    built, so an offline machine fails before any training, in one line."""
    if not backbone_named(backbone).has_imagenet:
        raise ValueError(
            f"train.weights: imagenet has no weights for train.backbone {backbone!r} (our own definition); "
            f"use weights: none or a path"
        )
    return fetch_imagenet_weights(imagenet_weights_source(backbone, image_size))


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
    record = backbone_named(backbone)
    inputs = keras.Input((image_size, image_size, 1), name=IMAGE_INPUT)
    features = record.features(normalise(inputs, layout, record), imagenet_file)
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
    layouts = ("none", "imagenet") if backbone_named(backbone).has_imagenet else ("none",)
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
            problems.append(f"{layout} layout: {first_line(exc)[:200]}")
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
    check_backbone_settings(backbone, image_size, "none")  # the name and the size; the weights below
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
