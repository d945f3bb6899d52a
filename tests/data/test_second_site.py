"""The phantom's second site (ingest.phantom.second_site): a seeded share of
films shown as another hospital's detector would show them, the truth in
sites.csv, and nothing changed when the share is 0."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from pipeline.phantom.generate import SITES_FILE, SecondSite, generate_phantom, second_site_films
from pipeline.phantom.plan import plan_films
from pipeline.phantom.render import COLLIMATED_GREY, FIRST_SITE, SiteLook, render_film
from tests.conftest import PROJECT_ROOT
from tests.data.test_phantom import tree_bytes

LOOK = SiteLook(exposure=1.3, noise=2.5, collimation=0.06, marker=True)
SIZE = 256


def high_pass_spread(pixels: np.ndarray) -> float:
    """The spread of a film's fine detail (film minus its 5x5 blur): mostly quantum noise."""
    grey = pixels.astype(np.float32)
    return float(np.std(grey - cv2.blur(grey, (5, 5))))


def test_a_share_of_zero_writes_the_data_set_there_was(tmp_path):
    default = generate_phantom(tmp_path / "default", n_images=12, seed=3, image_size=96, progress=False)
    off = generate_phantom(tmp_path / "off", n_images=12, seed=3, image_size=96, progress=False,
                           second_site=SecondSite(0.0, LOOK))
    assert tree_bytes(tmp_path / "default") == tree_bytes(tmp_path / "off")
    assert not (tmp_path / "off" / SITES_FILE).exists() and off["second_site"] == default["second_site"] == 0


@pytest.mark.parametrize("index", [0, 7, 19])
def test_the_second_site_shows_the_same_film_another_way(index):
    """Same anatomy, findings and boxes; brighter, noisier, white margins and a marker."""
    record = plan_films(20, 9)[index]
    first, first_boxes = render_film(record, 9, SIZE)
    second, second_boxes = render_film(record, 9, SIZE, site=LOOK)
    assert second_boxes == first_boxes
    margin = round(LOOK.collimation * SIZE)
    inner = (slice(margin, SIZE - margin), slice(margin, SIZE - margin))
    assert second[inner].mean() > first[inner].mean() * 1.1
    assert high_pass_spread(second[inner]) > 1.5 * high_pass_spread(first[inner])
    for band in (second[:margin], second[-margin:], second[:, :margin], second[:, -margin:]):
        assert band.min() >= COLLIMATED_GREY
    corner = second[margin:margin + SIZE // 8, margin:margin + SIZE // 8]
    assert (corner == 255).sum() > 20  # the burned-in "R"
    assert np.array_equal(render_film(record, 9, SIZE, site=FIRST_SITE)[0], first)


def test_a_share_of_films_is_the_second_sites_and_sites_csv_says_which(tmp_path):
    n = 60
    generate_phantom(tmp_path / "first", n_images=n, seed=4, image_size=96, progress=False)
    summary = generate_phantom(tmp_path / "mixed", n_images=n, seed=4, image_size=96, progress=False,
                               second_site=SecondSite(0.5, LOOK))
    lines = (tmp_path / "mixed" / SITES_FILE).read_text().splitlines()
    assert lines[0] == "Image Index,site" and len(lines) == n + 1
    sites = dict(line.split(",") for line in lines[1:])
    second = [name for name, site in sites.items() if site == "2"]
    assert summary["second_site"] == len(second)
    assert 14 <= len(second) <= 46  # Binomial(60, 0.5): outside this with probability below 1e-4
    first, mixed = tree_bytes(tmp_path / "first"), tree_bytes(tmp_path / "mixed")
    for name, site in sites.items():
        assert (first[f"images/{name}"] == mixed[f"images/{name}"]) == (site == "1"), name
    assert first["Data_Entry_2017.csv"] == mixed["Data_Entry_2017.csv"]
    assert first["BBox_List_2017.csv"] == mixed["BBox_List_2017.csv"]


def test_a_film_keeps_its_site_whatever_the_share_of_others():
    records = plan_films(40, 2)
    low, high = second_site_films(records, 2, 0.2), second_site_films(records, 2, 0.6)
    assert all(h for lo, h in zip(low, high) if lo)  # the same draw per film, a higher cut
    assert second_site_films(records, 2, 0.0) == [False] * 40 and second_site_films(records, 2, 1.0) == [True] * 40
    with pytest.raises(ValueError, match=r"second_site.share must be in \[0, 1\]"):
        second_site_films(records, 2, 1.5)


def test_the_phantom_stage_renders_the_second_site_from_params(tmp_path):
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["ingest"]["phantom"].update(n_images=6, image_size=64)
    params["ingest"]["phantom"]["second_site"]["share"] = 1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / "phantom.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "6 rendered as the second site" in result.stderr
    sites = (tmp_path / params["paths"]["phantom"] / SITES_FILE).read_text().splitlines()[1:]
    assert len(sites) == 6 and all(line.endswith(",2") for line in sites)
    # and ingest takes the mixed root as it takes any phantom root (sites.csv is not its business)
    ingest = subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / "ingest.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    assert len((tmp_path / params["paths"]["manifest"]).read_text().splitlines()) == 6 + 1
