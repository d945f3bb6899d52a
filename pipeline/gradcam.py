"""Grad-CAM (Selvaraju et al. 2017), batched: one gradient pass per batch."""
from __future__ import annotations

import cv2
import keras
import numpy as np
import tensorflow as tf


def last_feature_map_layer(model: keras.Model) -> str:
    """Name of the last layer with a 4-D (batch, h, w, c) output: the final
    convolutional feature map, whatever the backbone."""
    for layer in reversed(model.layers):
        shape = getattr(layer.output, "shape", None)
        if shape is not None and len(shape) == 4 and not isinstance(layer, keras.layers.InputLayer):
            return layer.name
    raise ValueError(f"model {model.name} has no 4-D feature map for Grad-CAM")


def grad_cam(
    model: keras.Model, images: np.ndarray, class_indices: np.ndarray, layer_name: str | None = None
) -> np.ndarray:
    """Heatmaps in [0, 1], shape (n, H, W), for image i and finding class_indices[i].

    Each heatmap is the ReLU of the feature maps weighted by the spatial mean
    of the class score's gradient, upsampled bilinearly to the input size.
    """
    layer_name = layer_name or last_feature_map_layer(model)
    grad_model = keras.Model(model.inputs, [model.get_layer(layer_name).output, model.output])
    images = tf.convert_to_tensor(images, tf.float32)
    indices = tf.convert_to_tensor(np.asarray(class_indices), tf.int32)
    with tf.GradientTape() as tape:
        features, scores = grad_model(images, training=False)
        # Samples are independent at inference, so the gradient of the sum
        # gives every image its own gradient in one pass.
        target = tf.reduce_sum(tf.gather(scores, indices, axis=1, batch_dims=1))
    gradients = tape.gradient(target, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, peak)
    size = images.shape[1:3]
    return tf.image.resize(cam[..., None], size, method="bilinear")[..., 0].numpy()


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """A BGR uint8 picture: the grey image with the heatmap in colour over it."""
    gray = np.clip(image.squeeze(), 0, 255).astype(np.uint8)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    colour = cv2.applyColorMap(np.uint8(np.clip(heatmap, 0, 1) * 255), cv2.COLORMAP_JET)
    return cv2.addWeighted(colour, alpha, base, 1 - alpha, 0)


def peak_in_box(heatmap: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Pointing game: is the heatmap's maximum inside the box (x, y, w, h)?"""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    bx, by, bw, bh = box
    return bool(bx <= x <= bx + bw and by <= y <= by + bh)
