"""A split's films through a model: the probabilities evaluate, the champion
comparison are computed from."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import image_size_of, uses_patient_metadata
from pipeline.core.patient import IMAGE_INPUT
from pipeline.records.dataset import make_dataset, shard_files


def predict_split(model: keras.Model, tfrecord_dir: Path, split: str, batch_size: int = 16):
    """Stream a split through the model: (probabilities, labels, image ids).
    A model that takes another image size than the shards' (a champion trained
    at 224 px, say) gets the shard images area-resized to its size."""
    probs, labels, ids = [], [], []
    files = shard_files(tfrecord_dir, split)
    if not files:
        return np.zeros((0, len(FINDINGS))), np.zeros((0, len(FINDINGS))), []
    size = image_size_of(model)
    for inputs, y, image_ids in make_dataset(files, batch_size, with_ids=True, metadata=uses_patient_metadata(model)):
        probs.append(model.predict_on_batch(_resized(inputs, size)))
        labels.append(y.numpy())
        ids.extend(i.decode() for i in image_ids.numpy())
    if not probs:
        return np.zeros((0, len(FINDINGS))), np.zeros((0, len(FINDINGS))), []
    return np.concatenate(probs).astype(np.float64), np.concatenate(labels).astype(np.int64), ids


def _resized(inputs, size: int):
    images = inputs[IMAGE_INPUT] if isinstance(inputs, dict) else inputs
    if images.shape[1] == size:
        return inputs
    images = tf.image.resize(images, (size, size), method="area")
    return {**inputs, IMAGE_INPUT: images} if isinstance(inputs, dict) else images
