"""Tests for pipeline.phantom.generate: the synthetic NIH-format chest X-ray set."""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.labels import FINDINGS, NO_FINDING, parse_finding_labels
from pipeline.phantom import generate as phantom
from pipeline.phantom.generate import generate_phantom

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
NAME_RE = re.compile(r"^(\d{8})_(\d{3})\.png$")


def read_rows(path: Path) -> tuple[str, list[list[str]]]:
    text = path.read_text(encoding="utf-8")
    header, *rest = text.splitlines()
    return header, list(csv.reader(io.StringIO("\n".join(rest))))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "phantom"
    summary = generate_phantom(out, n_images=30, seed=5, image_size=128, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """200 films: enough that every finding turns up."""
    out = tmp_path_factory.mktemp("large") / "phantom"
    summary = generate_phantom(out, n_images=200, seed=11, image_size=256, progress=False)
    return out, summary


def test_headers_are_nih_exact(small):
    out, _ = small
    entry_header, entries = read_rows(out / "Data_Entry_2017.csv")
    bbox_header, boxes = read_rows(out / "BBox_List_2017.csv")
    assert entry_header == DATA_ENTRY_HEADER
    assert bbox_header == BBOX_HEADER
    assert entries and all(len(r) == 12 and r[-1] == "" for r in entries)
    assert boxes and all(len(r) == 9 and r[-3:] == ["", "", ""] for r in boxes)


def test_data_entry_rows(small):
    out, summary = small
    _, rows = read_rows(out / "Data_Entry_2017.csv")
    assert len(rows) == summary["images"] == 30
    for name, labels, follow_up, patient, age, sex, view, w, h, sx, sy, _ in rows:
        m = NAME_RE.match(name)
        assert m, name
        assert int(m.group(1)) == int(patient) and int(m.group(2)) == int(follow_up)
        assert patient == str(int(patient)) and age == str(int(age))
        assert 1 <= int(age) <= 95
        assert sex in ("M", "F") and view in ("PA", "AP")
        assert (w, h) == ("128", "128")
        assert float(sx) == float(sy) > 0
        multi_hot = parse_finding_labels(labels)  # raises on "No Finding|X" or unknown names
        if labels != NO_FINDING:
            names = labels.split("|")
            assert names == [f for f in FINDINGS if f in names], "labels not in FINDINGS order"
            assert sum(multi_hot) == len(names)


def test_every_row_has_its_png_and_nothing_else(small):
    out, _ = small
    _, rows = read_rows(out / "Data_Entry_2017.csv")
    names = [r[0] for r in rows]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(names)
    assert len(set(names)) == len(names)
    for name in names:
        with Image.open(out / "images" / name) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (128, 128)
            pixels = np.asarray(im)
        assert pixels.std() > 20, "film is nearly blank"


def test_patients_and_follow_ups(small):
    out, summary = small
    _, rows = read_rows(out / "Data_Entry_2017.csv")
    by_patient: dict[int, list[list[str]]] = {}
    for r in rows:
        by_patient.setdefault(int(r[3]), []).append(r)
    assert summary["patients"] == len(by_patient)
    assert sorted(by_patient) == list(range(1, len(by_patient) + 1))
    assert any(len(films) > 1 for films in by_patient.values())
    for films in by_patient.values():
        assert 1 <= len(films) <= 5
        assert [int(r[2]) for r in films] == list(range(len(films)))
        assert len({r[5] for r in films}) == 1
        ages = [int(r[4]) for r in films]
        assert ages == sorted(ages)


def test_default_size_row_matches_nih_example(tmp_path):
    out = tmp_path / "one"
    generate_phantom(out, n_images=1, seed=0, progress=False)
    _, rows = read_rows(out / "Data_Entry_2017.csv")
    assert rows[0][0] == "00000001_000.png" and rows[0][3] == "1"
    assert rows[0][7:11] == ["1024", "1024", "0.143", "0.143"]
    with Image.open(out / "images" / "00000001_000.png") as im:
        assert im.size == (1024, 1024) and im.mode == "L"


def test_summary_matches_tables(large):
    out, summary = large
    _, rows = read_rows(out / "Data_Entry_2017.csv")
    _, boxes = read_rows(out / "BBox_List_2017.csv")
    multi_hot = np.array([parse_finding_labels(r[1]) for r in rows])
    assert summary["images"] == len(rows) == 200
    assert summary["positives"] == {f: int(c) for f, c in zip(FINDINGS, multi_hot.sum(axis=0))}
    assert summary["no_finding"] == sum(r[1] == NO_FINDING for r in rows)
    assert summary["boxes"] == len(boxes) == int(multi_hot.sum())


def test_every_finding_present_and_no_finding_share(large):
    _, summary = large
    missing = [f for f, c in summary["positives"].items() if c == 0]
    assert not missing
    assert 0.25 <= summary["no_finding"] / summary["images"] <= 0.55
    # NIH ordering survives at the extremes.
    assert summary["positives"]["Infiltration"] > summary["positives"]["Hernia"]


def test_one_box_per_planted_finding_inside_image(large):
    out, _ = large
    _, rows = read_rows(out / "Data_Entry_2017.csv")
    _, boxes = read_rows(out / "BBox_List_2017.csv")
    expected = sorted((r[0], f) for r in rows if r[1] != NO_FINDING for f in r[1].split("|"))
    assert sorted((b[0], b[1]) for b in boxes) == expected
    for _, _, x, y, w, h, *_ in boxes:
        x, y, w, h = map(float, (x, y, w, h))
        assert w > 0 and h > 0
        assert 0 <= x and 0 <= y and x + w <= 256 and y + h <= 256


@pytest.mark.parametrize("finding", ["Nodule", "Mass"])
def test_round_opacities_are_brighter_than_their_surroundings(large, finding):
    out, _ = large
    _, boxes = read_rows(out / "BBox_List_2017.csv")
    gains = []
    for name, label, x, y, w, h, *_ in boxes:
        if label != finding:
            continue
        img = np.asarray(Image.open(out / "images" / name), dtype=np.float64)
        x0, y0 = int(float(x)), int(float(y))
        x1, y1 = int(float(x) + float(w)), int(float(y) + float(h))
        # A thin ring: a wide one around a big mass reaches the bright chest wall.
        pad = max(2, max(x1 - x0, y1 - y0) // 4)
        outer = img[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad]
        inner = img[y0:y1, x0:x1]
        ring_mean = (outer.sum() - inner.sum()) / (outer.size - inner.size)
        gains.append(inner.mean() - ring_mean)
    assert len(gains) >= 5
    gains = np.array(gains)
    assert (gains > 0).mean() >= 0.85, gains
    assert np.median(gains) > 8, gains


def test_same_seed_is_byte_identical_other_seed_differs(small, tmp_path):
    out, _ = small
    again = tmp_path / "again"
    generate_phantom(again, n_images=30, seed=5, image_size=128, progress=False)
    assert tree_bytes(again) == tree_bytes(out)
    other = tmp_path / "other"
    generate_phantom(other, n_images=30, seed=6, image_size=128, progress=False)
    a, b = tree_bytes(out), tree_bytes(other)
    assert a["Data_Entry_2017.csv"] != b["Data_Entry_2017.csv"]
    shared = set(a) & set(b)
    assert any(a[k] != b[k] for k in shared if k.startswith("images"))


def test_workers_do_not_change_bytes(small, tmp_path):
    out, _ = small
    parallel = tmp_path / "parallel"
    generate_phantom(parallel, n_images=30, seed=5, image_size=128, workers=2, progress=False)
    assert tree_bytes(parallel) == tree_bytes(out)


def test_progress_lines_go_to_stderr(tmp_path, capsys):
    generate_phantom(tmp_path / "p", n_images=20, seed=1, image_size=64, progress=True)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert lines[-1].startswith("phantom: 20/20 images (")
    assert 5 <= len(lines) <= 11
    assert all(re.fullmatch(r"phantom: \d+/20 images \(\d+/s, \d+s elapsed, ~\d+s left\)", line) for line in lines)


def test_replaces_existing_dir_and_leaves_no_temp(tmp_path):
    out = tmp_path / "phantom"
    (out / "images").mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    (out / "images" / "99999999_000.png").write_bytes(b"junk")
    generate_phantom(out, n_images=3, seed=2, image_size=64, progress=False)
    assert not (out / "stale.txt").exists()
    assert not (out / "images" / "99999999_000.png").exists()
    assert len(list((out / "images").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phantom"]


def test_crash_keeps_old_dir_and_cleans_temp(tmp_path, monkeypatch):
    out = tmp_path / "phantom"
    generate_phantom(out, n_images=2, seed=3, image_size=64, progress=False)
    before = tree_bytes(out)
    calls = {"n": 0}
    real = phantom._render_to_file

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(job)

    monkeypatch.setattr(phantom, "_render_to_file", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_phantom(out, n_images=5, seed=4, image_size=64, progress=False)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phantom"]


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_phantom(tmp_path / "x", n_images=0, seed=1, progress=False)
    assert not (tmp_path / "x").exists()
