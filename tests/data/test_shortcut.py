"""The phantom's plantable shortcut (ingest.phantom.shortcut): a chest drain on
a seeded share of one finding's films and of the others, a Drain column
saying which; off, the data set is byte for byte the one without it; ingest
reads a metadata CSV with the extra column."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.phantom.generate import Shortcut, generate_phantom
from tests.conftest import build_manifest

FILMS, SEED, SIZE = 60, 3, 256
SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15}


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("shortcut")
    made = {"plain": Shortcut(), "off": Shortcut("Effusion", 0.0, 0.0), "planted": Shortcut("Pneumothorax", 1.0, 0.1)}
    for name, shortcut in made.items():
        generate_phantom(base / name, FILMS, SEED, image_size=SIZE, progress=False, shortcut=shortcut)
    return {name: base / name for name in made}


def test_off_writes_the_data_set_there_was_before(roots):
    assert digests(roots["off"]) == digests(roots["plain"])
    assert "Drain" not in (roots["plain"] / "Data_Entry_2017.csv").read_text().splitlines()[0]


def test_the_drain_column_says_which_films_have_one(roots):
    entry = pd.read_csv(roots["planted"] / "Data_Entry_2017.csv")
    ill = entry["Finding Labels"].str.contains("Pneumothorax")
    assert ill.sum() >= 3
    assert (entry.loc[ill, "Drain"] == 1).all()  # share_with 1.0
    others = entry.loc[~ill, "Drain"]
    assert set(others) <= {0, 1} and 0 < others.sum() < len(others) / 3  # share_without 0.1, seeded per film


def test_a_drain_is_a_bright_tube_and_nothing_else_changes(roots):
    entry = pd.read_csv(roots["planted"] / "Data_Entry_2017.csv")
    for image_id, drain in zip(entry["Image Index"], entry["Drain"]):
        planted = cv2.imread(str(roots["planted"] / "images" / image_id), cv2.IMREAD_GRAYSCALE)
        plain = cv2.imread(str(roots["plain"] / "images" / image_id), cv2.IMREAD_GRAYSCALE)
        changed = planted != plain
        if not drain:
            assert not changed.any(), image_id
            continue
        assert 0.003 < changed.mean() < 0.05, (image_id, changed.mean())
        assert planted[changed].mean() > 190  # radio-opaque: brighter than the lung it crosses
        ys, xs = np.nonzero(changed)
        assert xs.max() < 0.5 * SIZE and ys.min() > 0.1 * SIZE  # the film's left half, below the top edge
    boxes = [(roots[name] / "BBox_List_2017.csv").read_text() for name in ("planted", "plain")]
    assert boxes[0] == boxes[1]  # labels and boxes are the films' own


def test_ingest_reads_the_metadata_with_its_extra_column(roots):
    planted, _ = build_manifest(roots["planted"], SPLIT, seed=0)
    plain, _ = build_manifest(roots["plain"], SPLIT, seed=0)
    assert len(planted) == FILMS
    pd.testing.assert_frame_equal(planted.drop(columns="path"), plain.drop(columns="path"))


def test_a_bad_shortcut_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="shortcut.finding must be one of .*got 'Drain'"):
        generate_phantom(tmp_path / "bad", 5, SEED, image_size=64, progress=False, shortcut=Shortcut("Drain", 1, 0))
    with pytest.raises(ValueError, match=r"shortcut.share_without must be in \[0, 1\], got 1.5"):
        generate_phantom(tmp_path / "bad", 5, SEED, image_size=64, progress=False,
                         shortcut=Shortcut("Mass", 0.5, 1.5))


def test_a_drain_fits_a_film_of_any_aspect():
    """Drawn on a wide film as on a square one: the same place as a share of each side."""
    from pipeline.phantom.render import draw_drain

    for height, width in ((300, 300), (300, 450), (450, 300)):
        film = draw_drain(np.zeros((height, width), np.uint8), SEED, 4)
        ys, xs = np.nonzero(film)
        assert 0.05 * width < xs.min() and xs.max() < 0.4 * width, (height, width)
        assert 0.1 * height < ys.min() and ys.max() < 0.8 * height, (height, width)
