"""Class activation maps, batched (one gradient pass per batch):

- Grad-CAM (Selvaraju et al. 2017): feature maps weighted by the spatial mean
  of the class score's gradient;
- Grad-CAM++ (Chattopadhyay et al. 2018): weighted by a pixel-wise weighted
  sum of the positive gradients, which spreads the map over several instances
  of the evidence instead of the strongest one.

The class score is the output layer's logit, not the sigmoid probability: a
confident prediction saturates the sigmoid (p == 1.0 in float32 beyond a
logit of about 17), whose gradient then vanishes and leaves an empty map.
"""
from __future__ import annotations

import weakref

import cv2
import keras
import numpy as np
import tensorflow as tf

from pipeline.core.model_io import image_size_of, model_inputs, uses_patient_metadata
from pipeline.core.patient import NUM_PATIENT_FEATURES
from pipeline.core.settings import GRADCAM_METHODS as METHODS

POOLING_LAYERS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def _feature_map_layers(model: keras.Model) -> list[str]:
    """Names of the layers with a 4-D (batch, h, w, c) output, last first."""
    return [
        layer.name
        for layer in reversed(model.layers)
        if not isinstance(layer, keras.layers.InputLayer)
        and len(getattr(layer.output, "shape", ())) == 4
    ]


def last_feature_map_layer(model: keras.Model) -> str:
    """Name of the last layer with a 4-D output that is not a pooling layer:
    the final convolutional feature map, whatever the backbone. A trailing
    pool (VGG16's block5_pool) only halves the map's resolution; Selvaraju et
    al. explain VGG16 at its last convolution, block5_conv3."""
    candidates = _feature_map_layers(model)
    if not candidates:
        raise ValueError(f"model {model.name} has no 4-D feature map for Grad-CAM")
    return next((name for name in candidates if not isinstance(model.get_layer(name), POOLING_LAYERS)),
                candidates[0])


def resolve_layer(model: keras.Model, layer_name: str | None) -> str:
    """The target layer: the last 4-D feature map when layer_name is None,
    else layer_name, which must name a layer with a 4-D output."""
    if layer_name is None:
        return last_feature_map_layer(model)
    candidates = _feature_map_layers(model)
    if layer_name not in candidates:
        known = any(layer.name == layer_name for layer in model.layers)
        why = "has no 4-D (batch, h, w, c) output" if known else "is not a layer of the model"
        raise ValueError(
            f"Grad-CAM layer {layer_name!r} (explain.layer) {why} ({model.name}); its last feature maps: "
            f"{', '.join(candidates[:5])} (null picks {candidates[0] if candidates else 'none'})"
        )
    return layer_name


def feature_map_shape(model: keras.Model, layer_name: str) -> tuple[int, int]:
    """The (h, w) grid of a feature map layer, e.g. (10, 10) for DenseNet121 at 320 px."""
    shape = model.get_layer(layer_name).output.shape
    return int(shape[1]), int(shape[2])


def to_heatmaps(maps: tf.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, h, w) non-negative maps on a feature grid to heatmaps (n, *size):
    upsampled bilinearly to the input size, then divided by their maximum (an
    all-zero map stays zero: no evidence anywhere)."""
    maps = tf.convert_to_tensor(maps, tf.float32)
    maps = tf.image.resize(maps[..., None], size, method="bilinear")[..., 0]
    return tf.math.divide_no_nan(maps, tf.reduce_max(maps, axis=(1, 2), keepdims=True)).numpy()


def _logit_model(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.layers.Dense]:
    """A model giving (feature maps, the output layer's input), and that output
    layer, so the tape can compute the logits from the latter."""
    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense):
        raise ValueError(f"Grad-CAM needs a Dense output layer for the class logits; {model.name} ends in "
                         f"{type(head).__name__}")
    return keras.Model(model.input, [model.get_layer(layer_name).output, head.input]), head


def _gradcam_weights(gradients: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)


def _gradcam_plus_plus_weights(gradients: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
    # With Y = exp(S) and S piecewise linear in the features A, the second and
    # third derivatives of Y are exp(S) g^2 and exp(S) g^3 (g = dS/dA), and
    # alpha = g^2 / (2 g^2 + sum_ab A_ab g^3) (the paper's eq. 19). The factor
    # exp(S) in relu(dY/dA) is one constant per map, removed by normalisation.
    squared, cubed = gradients**2, gradients**3
    spatial_sum = tf.reduce_sum(features, axis=(1, 2), keepdims=True)
    denominator = 2.0 * squared + spatial_sum * cubed
    alpha = tf.math.divide_no_nan(squared, denominator)
    return tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=(1, 2), keepdims=True)


_WEIGHTS = {"gradcam": _gradcam_weights, "gradcam++": _gradcam_plus_plus_weights}


# One compiled gradient function per (model, layer, method): building the
# sub-model and tracing cost more than a DenseNet121 pass on a small batch.
_COMPILED: weakref.WeakKeyDictionary[keras.Model, dict] = weakref.WeakKeyDictionary()


def _compiled_cam(model: keras.Model, layer_name: str, method: str):
    cache = _COMPILED.setdefault(model, {})
    if (layer_name, method) not in cache:
        grad_model, head = _logit_model(model, layer_name)
        weigh = _WEIGHTS[method]
        size = image_size_of(model)

        def cams(images, indices, metadata):
            with tf.GradientTape() as tape:
                features, head_inputs = grad_model(model_inputs(model, images, metadata), training=False)
                logits = tf.matmul(head_inputs, head.kernel)
                if head.use_bias:
                    logits = logits + head.bias
                # Samples are independent at inference, so the gradient of the
                # sum gives every image its own gradient in one pass. With
                # metadata the logit gains a term that does not depend on the
                # image features, so the map still shows image evidence only.
                target = tf.reduce_sum(tf.gather(logits, indices, axis=1, batch_dims=1))
            gradients = tape.gradient(target, features)
            return tf.nn.relu(tf.reduce_sum(weigh(gradients, features) * features, axis=-1))

        signature = [tf.TensorSpec([None, size, size, 1], tf.float32), tf.TensorSpec([None], tf.int32)]
        if uses_patient_metadata(model):
            patient = tf.TensorSpec([None, NUM_PATIENT_FEATURES], tf.float32)
            compiled = tf.function(cams, input_signature=[*signature, patient],
                                   reduce_retracing=True)
        else:
            compiled = tf.function(lambda images, indices: cams(images, indices, None), input_signature=signature,
                                   reduce_retracing=True)
        cache[(layer_name, method)] = compiled
    return cache[(layer_name, method)]


def grad_cam(
    model: keras.Model,
    images: np.ndarray,
    class_indices: np.ndarray,
    layer_name: str | None = None,
    method: str = "gradcam",
    metadata: np.ndarray | None = None,
) -> np.ndarray:
    """Heatmaps in [0, 1], shape (n, H, W), for image i and finding class_indices[i].

    The ReLU of the target layer's feature maps weighted per `method`
    ("gradcam" or "gradcam++"), made into heatmaps by to_heatmaps. A model
    with patient metadata needs each image's encoded `metadata` (n, 3).
    """
    if method not in _WEIGHTS:
        raise ValueError(f"Grad-CAM method must be one of {', '.join(METHODS)}, got {method!r}")
    model_inputs(model, None, metadata)  # fails early, saying what is missing or extra
    cams = _compiled_cam(model, resolve_layer(model, layer_name), method)
    images = tf.convert_to_tensor(images, tf.float32)
    indices = tf.convert_to_tensor(np.asarray(class_indices), tf.int32)
    if metadata is None:
        cam = cams(images, indices)
    else:
        cam = cams(images, indices, tf.convert_to_tensor(metadata, tf.float32))
    return to_heatmaps(cam, tuple(images.shape[1:3]))


def random_grids(count: int, grid: tuple[int, int], seed: int) -> np.ndarray:
    """The chance baseline's maps before to_heatmaps: uniform noise on the target
    layer's grid, so the heatmaps made from it are exactly as smooth as real
    ones; (count, *grid), the same for the same arguments."""
    return np.random.default_rng(seed).uniform(size=(count, *grid)).astype(np.float32)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """A BGR uint8 picture: the grey image with the heatmap in colour over it."""
    gray = np.clip(image.squeeze(), 0, 255).astype(np.uint8)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    colour = cv2.applyColorMap(np.uint8(np.clip(heatmap, 0, 1) * 255), cv2.COLORMAP_JET)
    return cv2.addWeighted(colour, alpha, base, 1 - alpha, 0)
