"""One record per backbone: everything train, the ImageNet weights, Grad-CAM,
the settings check and the docs need to know about it (as torchxrayvision keeps
one record per model).

A new backbone is one `register(Backbone(...))`: a function from the
normalised input tensor (and the ImageNet weights file, or None) to its last
4-D feature map, that map's layer name, its smallest input, and, where it has
ImageNet weights, how they expect their input and where Keras gets them.

This module imports no Keras at load time, so a stage checks train.backbone
and preprocess.image_size in well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.core.config import ConfigError
from pipeline.core.settings import refused, registered
from pipeline.model import pretrained
from pipeline.model.pretrained import WeightsSource

# How ImageNet weights expect their input (keras.applications.<name>.preprocess_input):
# "torch" = 0..1 then ImageNet mean/std, "caffe" = 0..255 minus channel means,
# "tf" = -1..1, "raw" = 0..255 (EfficientNet normalises inside itself).
INPUT_MODES = ("torch", "caffe", "tf", "raw")
# The input sizes MobileNetV2 has ImageNet weights for; Keras uses 224's otherwise.
MOBILENETV2_SIZES = (96, 128, 160, 192, 224)

Features = Callable[..., object]  # (normalised input tensor, ImageNet weights file | None) -> 4-D feature map


@dataclass(frozen=True)
class Backbone:
    name: str
    features: Features
    gradcam_layer: str  # the feature map Grad-CAM explains when explain.layer is empty (its last convolution)
    origin: str  # where its definition comes from, for the docs
    min_image_size: int = 32  # the smallest input that leaves a non-empty feature map
    imagenet_input: str | None = None  # one of INPUT_MODES; None: no ImageNet weights
    imagenet_weights: Callable[[int], WeightsSource] | None = None  # image size -> Keras's file
    from_scratch_input: str = "standardised"  # "standardised" (one channel, ~zero mean) or "raw" (0..255)

    @property
    def has_imagenet(self) -> bool:
        return self.imagenet_weights is not None


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    if backbone.imagenet_input is not None and backbone.imagenet_input not in INPUT_MODES:
        raise ValueError(f"backbone {backbone.name}: imagenet_input must be one of {', '.join(INPUT_MODES)}")
    if (backbone.imagenet_input is None) != (backbone.imagenet_weights is None):
        raise ValueError(f"backbone {backbone.name}: imagenet_input and imagenet_weights go together")
    BACKBONES[backbone.name] = backbone
    return backbone


def backbone_named(name: str) -> Backbone:
    return registered("train.backbone", name, BACKBONES)


def check_backbone_settings(name: str, image_size: int, weights: str) -> Backbone:
    """train.backbone, train.weights and preprocess.image_size together, before any work."""
    backbone = backbone_named(name)
    if image_size < backbone.min_image_size:
        raise refused("preprocess.image_size", image_size,
                      f"at least {backbone.min_image_size} px for train.backbone {name}")
    if weights == "imagenet" and not backbone.has_imagenet:
        with_weights = [b.name for b in BACKBONES.values() if b.has_imagenet]
        raise ConfigError(f"params.yaml: train.weights is 'imagenet' but train.backbone {name} has no ImageNet "
                          f"weights; use none or a path, or one of {', '.join(with_weights)}")
    if weights not in ("none", "imagenet") and not Path(weights).is_file():
        raise ConfigError(f"params.yaml: train.weights is {weights!r}: no such file; allowed: none | imagenet | "
                          f"the path of a weights file saved from one of our models")
    return backbone


def keras_application(class_name: str) -> Features:
    """keras.applications.<class_name> without its top, built into the caller's graph."""
    def features(inputs, imagenet_file: Path | None):
        import keras

        # input_tensor builds the backbone's layers into this graph (not a nested
        # model), so Grad-CAM can reach its last feature map by layer name.
        base = getattr(keras.applications, class_name)(include_top=False, weights=None, input_tensor=inputs)
        if imagenet_file is not None:
            # What Keras does with weights="imagenet", from the file fetched and hash-checked before.
            base.load_weights(imagenet_file)
        return base.output
    return features


def own_definition(function_name: str) -> Features:
    """One of ours in pipeline.model.own_backbones (no ImageNet weights)."""
    def features(inputs, imagenet_file: Path | None):
        from pipeline.model import own_backbones

        return getattr(own_backbones, function_name)(inputs)
    return features


def keras_file(folder: str, file_name: str, md5: str | None) -> Callable[[int], WeightsSource]:
    """A keras-applications weights file; the URL read when asked (tests point it elsewhere)."""
    return lambda image_size: WeightsSource(file_name, f"{pretrained.KERAS_APPLICATIONS_URL}{folder}/{file_name}", md5)


def mobilenetv2_file(image_size: int) -> WeightsSource:
    rows = image_size if image_size in MOBILENETV2_SIZES else 224
    name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    return WeightsSource(name, f"{pretrained.KERAS_APPLICATIONS_URL}mobilenet_v2/{name}", None)


def efficientnetb0_file(image_size: int) -> WeightsSource:
    # EfficientNet's files live one level up, outside tensorflow/.
    name = "efficientnetb0_notop.h5"
    return WeightsSource(name, f"https://storage.googleapis.com/keras-applications/{name}",
                         "50bc09e76180e00e4465e1a485ddc09d")


# The URLs and hashes are Keras 3.15.1's (keras/src/applications/*.py);
# tests/model/test_pretrained_weights.py checks them against the installed Keras.
KERAS = "keras.applications"
register(Backbone("densenet121", keras_application("DenseNet121"), "relu", KERAS, imagenet_input="torch",
                  imagenet_weights=keras_file("densenet", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                              "30ee3e1110167f948a6b9946edeeb738")))
register(Backbone("resnet50", keras_application("ResNet50"), "conv5_block3_out", KERAS, imagenet_input="caffe",
                  imagenet_weights=keras_file("resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                              "4d473c1dd8becc155b73f8504c6f6626")))
register(Backbone("mobilenetv2", keras_application("MobileNetV2"), "out_relu", KERAS, imagenet_input="tf",
                  imagenet_weights=mobilenetv2_file))
register(Backbone("efficientnetb0", keras_application("EfficientNetB0"), "top_activation", KERAS,
                  imagenet_input="raw", imagenet_weights=efficientnetb0_file, from_scratch_input="raw"))
register(Backbone("vgg16", keras_application("VGG16"), "block5_conv3", KERAS, imagenet_input="caffe",
                  imagenet_weights=keras_file("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                              "6d6bbae143d832006294945121d1f1fc")))
OURS = "ours (pipeline/model/own_backbones.py)"
register(Backbone("resnet18", own_definition("resnet18"), "stage4_block1_out", OURS))
register(Backbone("alexnet", own_definition("alexnet"), "conv5", OURS))
register(Backbone("small_cnn", own_definition("small_cnn"), "block3_relu", OURS, min_image_size=8))


def imagenet_weights_source(name: str, image_size: int) -> WeightsSource:
    """The file keras.applications downloads for backbone `name` without its top, at `image_size`."""
    backbone = backbone_named(name)
    if backbone.imagenet_weights is None:
        raise ValueError(f"train.weights: imagenet has no weights file for train.backbone {name!r}")
    return backbone.imagenet_weights(image_size)


def backbone_table(size_for_files: int = 320) -> str:
    """The docs' table of backbones (docs/training.md), from the records."""
    rows = ["| backbone | definition | smallest input | ImageNet weights (Keras's file at "
            f"{size_for_files} px) | ImageNet input | Grad-CAM layer |", "|---|---|---|---|---|---|"]
    for backbone in BACKBONES.values():
        weights = (f"`{backbone.imagenet_weights(size_for_files).file_name}`" if backbone.has_imagenet else "none")
        rows.append(f"| `{backbone.name}` | {backbone.origin} | {backbone.min_image_size} px | {weights} | "
                    f"{backbone.imagenet_input or '-'} | `{backbone.gradcam_layer}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(backbone_table())
