"""A small model trained on the synthetic phantom, and the film edits that
tests/model/test_behaviour.py puts it through.

`train_phantom_model` goes the pipeline's own way: the phantom written in NIH's
layout at 256 px, ingest's manifest (patient-wise hash split), 64 px TFRecord
shards, small_cnn fitted by pipeline.model.train.train_model with params.yaml's
augmentation, the best epoch by validation AUC loaded back through the serving
API (pipeline.serve.predict.load_model). Test films are rendered in memory by
the phantom's own code and brought to model input the way load_xray does
(a 256 px square film resized to 64 px by area), which is what the PNG route
gives, pixel for pixel.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.phantom.findings import PLANTERS
from pipeline.phantom.plan import FilmRecord, plan_films
from pipeline.phantom.render import render_film
from pipeline.records.film import model_input as pipeline_model_input
from tests.conftest import section_settings

FILM_SIZE = 256  # the phantom's films
INPUT_SIZE = 64  # the model's input, as preprocess.image_size
TRAIN_IMAGES, TRAIN_PHANTOM_SEED = 600, 1
TEST_IMAGES, TEST_PHANTOM_SEED = 200, 2  # another seed: other patients, other films
SPLIT = {"train": 0.85, "val": 0.15, "test": 0.0}  # the test set is the second phantom
TRAIN_SETTINGS = section_settings(
    "train", backbone="small_cnn", batch_size=16, epochs=10, learning_rate=1e-3, lr_schedule="cosine",
    # params.yaml's train.augment, copied so that test_behaviour's bounds stay measured against it
    augment={"rotation": 5, "zoom": 0.05, "shift": 0.03, "hflip": False, "brightness": 0.05, "contrast": 0.1},
)


def train_phantom_model(workdir: Path, seed: int = 0, shortcut=None, n_images: int = TRAIN_IMAGES):
    """Phantom -> manifest -> 64 px shards -> small_cnn; returns (XrayModel, train summary).
    shortcut: a pipeline.phantom.generate.Shortcut planted in the training films (default none)."""
    import keras

    from pipeline.model.architectures import build_model
    from pipeline.model.train import train_model
    from pipeline.phantom.generate import generate_phantom
    from pipeline.records.preprocess import write_tfrecord_shards
    from pipeline.serve.predict import load_model
    from tests.conftest import build_manifest

    root = workdir / "phantom"
    planted = {} if shortcut is None else {"shortcut": shortcut}
    generate_phantom(root, n_images=n_images, seed=TRAIN_PHANTOM_SEED, image_size=FILM_SIZE, progress=False,
                     **planted)
    manifest, _ = build_manifest(root, SPLIT, seed=seed)
    shards = workdir / "tfrecords"
    shards.mkdir()
    index, quarantined = write_tfrecord_shards(manifest, shards, image_size=INPUT_SIZE, shard_size=10_000)
    assert quarantined.empty
    (shards / "index.json").write_text(json.dumps(index))
    # Seeds only: train's seed_everything would also switch on TensorFlow's op
    # determinism, for the rest of the test session.
    keras.utils.set_random_seed(seed)
    model = build_model(TRAIN_SETTINGS.backbone, INPUT_SIZE, "none", batchnorm_momentum=0.9)
    checkpoint = workdir / "model.keras"
    result = train_model(model, shards, checkpoint, TRAIN_SETTINGS, seed=seed)
    return load_model(checkpoint), result["summary"]


def model_input(film: np.ndarray) -> np.ndarray:
    """A 256 px uint8 film -> float32 (64, 64, 1), as preprocess_xray reads its PNG."""
    return pipeline_model_input(film, INPUT_SIZE)


def render(record: FilmRecord, seed: int) -> np.ndarray:
    return render_film(record, seed, FILM_SIZE)[0]


def phantom_test_set(n_images: int = TEST_IMAGES, seed: int = TEST_PHANTOM_SEED):
    """The fixed test phantom: (records, 256 px films, 64 px inputs, labels (n, 14))."""
    records = plan_films(n_images, seed)
    films = [render(record, seed) for record in records]
    labels = np.array([[finding in record.findings for finding in FINDINGS] for record in records], np.float32)
    return records, films, np.stack([model_input(film) for film in films]), labels


def brighten(film: np.ndarray, fraction: float) -> np.ndarray:
    """Every grey value moved by fraction of the grey range (train.augment.brightness's kind of change)."""
    return np.clip(film.astype(np.float32) + fraction * 255.0, 0, 255).round().astype(np.uint8)


def rotate(film: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation about the centre, bilinear, borders reflected as train's augmentation does."""
    size = film.shape[0]
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(film, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


@contextmanager
def left_undrawn(finding: str) -> Iterator[None]:
    """Inside the block the phantom places `finding` as usual (the same random
    draws, so the rest of the film, noise included, comes out the same) but
    draws nothing: the film without that finding and with everything else.
    Only the finding's planted pattern goes; the structural signs that
    anatomy.build_anatomy moves (Cardiomegaly's heart, Emphysema's
    hyperinflation, Atelectasis's raised dome) stay."""
    real = PLANTERS[finding]

    def placed_not_drawn(film):
        layers = (film.opacity.copy(), film.lucency.copy(), film.vessel_keep.copy(), film.bone_keep.copy())
        finding_map = real(film)
        film.opacity, film.lucency, film.vessel_keep, film.bone_keep = layers
        return finding_map

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PLANTERS, finding, placed_not_drawn)
        yield


def planted_pair(record: FilmRecord, finding: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A no-finding film with `finding` planted by the phantom's own code, and
    the same film without it: (with, without) model inputs."""
    planted = replace(record, findings=(finding,))
    with left_undrawn(finding):
        without = render(planted, seed)
    return model_input(render(planted, seed)), model_input(without)


def removed_pair(record: FilmRecord, finding: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A film that has `finding` (perhaps among others), and the same film with
    only that finding's pattern taken out: (with, without) model inputs."""
    with left_undrawn(finding):
        without = render(record, seed)
    return model_input(render(record, seed)), model_input(without)


def films_with(records: list[FilmRecord], finding: str | None, count: int) -> list[FilmRecord]:
    """The first `count` records that have `finding` (None: no finding at all)."""
    chosen = [r for r in records if (not r.findings if finding is None else finding in r.findings)][:count]
    assert len(chosen) == count, f"only {len(chosen)} films with {finding or 'no finding'}"
    return chosen
