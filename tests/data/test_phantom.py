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
from pipeline.phantom import anatomy, render
from pipeline.phantom import generate as phantom
from pipeline.phantom.generate import generate_phantom
from pipeline.phantom.plan import in_subgroup, plan_films

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


def box_contrast(image_file, x, y, w, h) -> float:
    """Mean grey level inside a box (BBox_List_2017.csv's x, y, w, h) minus the
    mean of a thin ring around it."""
    img = np.asarray(Image.open(image_file), dtype=np.float64)
    x0, y0 = int(float(x)), int(float(y))
    x1, y1 = int(float(x) + float(w)), int(float(y) + float(h))
    # A thin ring: a wide one around a big mass reaches the bright chest wall.
    pad = max(2, max(x1 - x0, y1 - y0) // 4)
    outer = img[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad]
    inner = img[y0:y1, x0:x1]
    return float(inner.mean() - (outer.sum() - inner.sum()) / max(1, outer.size - inner.size))


@pytest.mark.parametrize("finding", ["Nodule", "Mass"])
def test_round_opacities_are_brighter_than_their_surroundings(large, finding):
    out, _ = large
    _, boxes = read_rows(out / "BBox_List_2017.csv")
    gains = []
    for name, label, x, y, w, h, *_ in boxes:
        if label != finding:
            continue
        gains.append(box_contrast(out / "images" / name, x, y, w, h))
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


# --- ingest.phantom.subgroup_gap: findings drawn fainter on women under 40 ---

# sha256 of Data_Entry_2017.csv for the `small` phantom (30 films, seed 5, 128 px), taken from the code
# before subgroup_gap existed. Only the label plan goes into it, which is plain integer and float draws
# from NumPy's seeded generator, so the pin holds on any machine. (The pixels are pinned by
# test_subgroup_gap_zero_takes_the_old_code_path instead: NumPy's SIMD exp/sin can differ by an ulp
# between CPUs, so a pixel hash would not be portable. The whole default 500 x 1024 px set was checked
# byte-identical to the dvc.lock'ed one when the gap was added.)
SMALL_DATA_ENTRY_SHA256 = "6dd89916f14bd81d2e947e1dd74cdeac728e06fb3f6dd928c7ba6a363ffcdb01"


def in_slice(row: list[str]) -> bool:
    """A Data_Entry_2017.csv row in the subgroup slice: Patient Gender F, Patient Age < 40."""
    return row[5] == "F" and int(row[4]) < 40


def box_contrasts(out: Path) -> tuple[list[float], list[float]]:
    """|mean inside each planted box - mean of a thin ring around it|, for boxes on films
    in the slice and on the others."""
    _, entries = read_rows(out / "Data_Entry_2017.csv")
    _, boxes = read_rows(out / "BBox_List_2017.csv")
    slice_films = {row[0] for row in entries if in_slice(row)}
    inside, outside = [], []
    for name, _, x, y, w, h, *_ in boxes:
        (inside if name in slice_films else outside).append(abs(box_contrast(out / "images" / name, x, y, w, h)))
    return inside, outside


@pytest.fixture(scope="module")
def large_faded(tmp_path_factory):
    """`large` again (200 films, seed 11, 256 px) with subgroup_gap 0.5."""
    out = tmp_path_factory.mktemp("faded") / "phantom"
    generate_phantom(out, n_images=200, seed=11, image_size=256, progress=False, subgroup_gap=0.5)
    return out


def test_subgroup_slice_is_women_under_40_and_a_real_share():
    records = plan_films(3000, seed=0)
    assert all(in_subgroup(r) == (r.sex == "F" and r.age < 40) for r in records)
    share = sum(map(in_subgroup, records)) / len(records)
    assert 0.08 <= share <= 0.2, share  # ~12%, about NIH's own share
    # Enough of them have findings for slice metrics to see the gap.
    assert sum(in_subgroup(r) and bool(r.findings) for r in records) >= 0.05 * len(records)


def test_subgroup_gap_zero_leaves_the_labels_as_they_were(small):
    import hashlib

    out, _ = small
    assert hashlib.sha256((out / "Data_Entry_2017.csv").read_bytes()).hexdigest() == SMALL_DATA_ENTRY_SHA256


def test_subgroup_gap_zero_takes_the_old_code_path(small, tmp_path, monkeypatch):
    """gap 0 never reaches the fading arithmetic: no structural sign is moved
    (faded returns the abnormal value itself), no hidden markings are given
    back, and the bytes equal the default call's, slice films included."""
    out, _ = small
    _, rows = read_rows(out / "Data_Entry_2017.csv")
    assert any(in_slice(r) and r[1] != NO_FINDING for r in rows), "no slice film with findings to check"
    real_faded = anatomy.faded

    def only_zero(normal, abnormal, fade):
        assert fade == 0.0
        result = real_faded(normal, abnormal, fade)
        assert result is abnormal
        return result

    def never(*args):
        raise AssertionError("fade_hidden_markings called with subgroup_gap 0")

    monkeypatch.setattr(anatomy, "faded", only_zero)
    monkeypatch.setattr(render, "fade_hidden_markings", never)
    again = tmp_path / "gap0"
    generate_phantom(again, n_images=30, seed=5, image_size=128, progress=False, subgroup_gap=0)
    assert tree_bytes(again) == tree_bytes(out)


def test_subgroup_gap_changes_only_the_pixels_of_slice_films_with_findings(large, large_faded):
    out, _ = large
    before, after = tree_bytes(out), tree_bytes(large_faded)
    assert before["Data_Entry_2017.csv"] == after["Data_Entry_2017.csv"]
    _, rows = read_rows(out / "Data_Entry_2017.csv")
    changed = {f"images/{r[0]}" for r in rows if in_slice(r) and r[1] != NO_FINDING}
    assert len(changed) >= 10
    assert {k for k in before if before[k] != after[k]} == changed | {"BBox_List_2017.csv"}
    # Boxes move only where a faded structural sign (heart, hyperinflation, dome) reshapes a slice film.
    _, boxes_before = read_rows(out / "BBox_List_2017.csv")
    _, boxes_after = read_rows(large_faded / "BBox_List_2017.csv")
    assert [b[:2] for b in boxes_before] == [b[:2] for b in boxes_after]
    assert ([b for b in boxes_before if f"images/{b[0]}" not in changed]
            == [b for b in boxes_after if f"images/{b[0]}" not in changed])


def test_subgroup_gap_draws_slice_findings_fainter(large, large_faded):
    """Box contrast on women under 40 vs everyone else, same films and labels.
    Measured (seed 11): gap 0 medians 34.7 vs 30.8 grey levels (ratio 1.13),
    gap 0.5 13.1 vs 30.8 (0.42)."""
    out, _ = large
    inside, outside = box_contrasts(out)
    assert len(inside) >= 20 and len(outside) >= 150
    assert np.median(inside) > 0.8 * np.median(outside)  # gap 0: not fainter
    faded_inside, faded_outside = box_contrasts(large_faded)
    assert faded_outside == outside  # the other films are untouched
    assert np.median(faded_inside) < 0.6 * np.median(faded_outside)
    assert np.median(faded_inside) < 0.6 * np.median(inside)


def test_the_phantom_stage_passes_subgroup_gap_on(small, tmp_path):
    out, _ = small
    staged = tmp_path / "staged"
    phantom.write_phantom(staged, "phantom", n_images=30, seed=5, image_size=128, progress=False, subgroup_gap=0.5)
    before, after = tree_bytes(out), tree_bytes(staged)
    _, rows = read_rows(out / "Data_Entry_2017.csv")
    changed = {k for k in before if k.startswith("images/") and before[k] != after[k]}
    assert changed == {f"images/{r[0]}" for r in rows if in_slice(r) and r[1] != NO_FINDING}


@pytest.mark.parametrize("gap", [-0.1, 1.0, 1.5])
def test_subgroup_gap_out_of_range_is_refused(tmp_path, gap):
    with pytest.raises(ValueError, match="subgroup_gap must be in"):
        generate_phantom(tmp_path / "x", n_images=2, seed=1, image_size=64, progress=False, subgroup_gap=gap)
    assert not (tmp_path / "x").exists()
