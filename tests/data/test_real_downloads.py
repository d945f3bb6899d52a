"""Real downloads through the ingest and validate stages: Kaggle's full data
set ships the 2017 Data_Entry_2017.csv, with NIH's age typos, and users'
CSVs hold more than one bad row. Real NIH films from ../shared, stage
scripts run as DVC runs them, in a project folder of their own."""
from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.data.manifest import read_manifest
from tests.conftest import NIH_2017_HEADER, PROJECT_ROOT

FILMS = 20


def kaggle_download(nih_subset: Path, root: Path) -> tuple[Path, list[list[str]]]:
    """A Kaggle-layout root: images_001/images/ holding links to FILMS real
    films, and their rows of NIH's CSV written as the 2017 file is (trailing
    commas). Returns the root and the rows, in file order (row i is line i + 2)."""
    shared = nih_subset / "images_001" / "images"
    names = sorted(p.name for p in shared.iterdir())[:FILMS]
    images = root / "images_001" / "images"
    images.mkdir(parents=True)
    for name in names:
        (images / name).symlink_to(shared / name)
    wanted, rows = set(names), []
    with gzip.open(nih_subset / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as handle:
        rows = [fields for fields in csv.reader(handle) if fields[0] in wanted]
    assert len(rows) == FILMS
    return root, rows


def write_data_entry_2017(root: Path, rows: list[list[str]]) -> Path:
    path = root / "Data_Entry_2017.csv"
    path.write_text("\n".join([NIH_2017_HEADER, *(",".join(fields) + "," for fields in rows)]) + "\n")
    return path


def project_for(root: Path, project: Path, **validate) -> Path:
    """A project folder whose params.yaml is the repository's, pointed at root."""
    project.mkdir(exist_ok=True)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["ingest"].update(source="nih", root=str(root))
    # 20 films of a handful of patients: shares that leave each split at least one (validate stops an empty one)
    params["ingest"]["split"].update(train=0.4, val=0.3, test=0.3)
    params["validate"] = {**params.get("validate", {}), "min_split_patients": 1, **validate}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def run_stage(stage: str, project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / f"{stage}.py")], cwd=project,
                          capture_output=True, text=True, timeout=300)


def test_kaggle_2017_csv_with_nih_age_typos_keeps_every_film(nih_subset, tmp_path):
    root, rows = kaggle_download(nih_subset, tmp_path / "kaggle")
    rows[3][4], rows[11][4] = "148", "414"  # two of the 2017 typos (NIH fixed them in the 2020 CSV)
    csv_path = write_data_entry_2017(root, rows)
    project = project_for(root, tmp_path / "project")

    ingest = run_stage("ingest", project)
    assert ingest.returncode == 0, ingest.stderr
    validate = run_stage("validate", project)
    assert validate.returncode == 0, validate.stderr

    validated = read_manifest(project / "data" / "validated" / "manifest.csv")
    assert len(validated) == FILMS
    ages = validated.set_index("image_id")["age"]
    assert ages.isna().sum() == 2 and pd.isna(ages[rows[3][0]]) and pd.isna(ages[rows[11][0]])
    assert ages[rows[0][0]] == int(rows[0][4])
    for index, age in ((3, 148), (11, 414)):
        assert (f"validate: warning: age {age} outside 0..120 kept as missing: {rows[index][0]} "
                f"({csv_path.name} line {index + 2})") in validate.stderr.splitlines()
    assert json.loads((project / "metrics" / "validate.json").read_text())["ages_missing"] == 2
    report = json.loads((project / "reports" / "validation" / "validate.json").read_text())
    assert [n["image_id"] for n in report["ages_missing"]] == [rows[3][0], rows[11][0]]
    assert f"<td>{rows[11][0]}</td><td>414</td>" in (project / "reports" / "validation" / "index.html").read_text()

    preprocess = run_stage("preprocess", project)  # default params: 320 px records of every film
    assert preprocess.returncode == 0, preprocess.stderr
    index = json.loads((project / "data" / "tfrecords" / "index.json").read_text())
    assert sum(split["records"] for split in index["splits"].values()) == FILMS and index["quarantined"] == 0


def test_four_bad_rows_named_in_one_run_then_dropped(nih_subset, tmp_path):
    root, rows = kaggle_download(nih_subset, tmp_path / "kaggle")
    rows[2][1] = "Pneumonitis"  # line 4
    rows[5][0] = "../../../../etc/passwd"  # line 7
    rows[8][4] = "414"  # line 10
    rows.append(list(rows[12]))  # line 22: rows[12]'s Image Index again
    csv_path = write_data_entry_2017(root, rows)
    project = project_for(root, tmp_path / "project")

    ingest = run_stage("ingest", project)
    assert ingest.returncode == 0, ingest.stderr
    assert "ingest: 3 CSV row(s) rejected, listed in data/ingest/rejected_rows.csv" in ingest.stderr
    validate = run_stage("validate", project)
    assert validate.returncode == 1, validate.stderr
    err = validate.stderr.splitlines()
    assert [line for line in err if line.startswith(f"  {csv_path}: ")] == [
        f"  {csv_path}: line 4: {rows[2][0]}: unknown finding 'Pneumonitis' in 'Pneumonitis'",
        f"  {csv_path}: line 7: ../../../../etc/passwd: Image Index is a path, not a plain file name like "
        "00000001_000.png",
        f"  {csv_path}: line 22: {rows[12][0]}: duplicate Image Index (first on line 14)",
    ]
    assert f"validate: warning: age 414 outside 0..120 kept as missing: {rows[8][0]} (Data_Entry_2017.csv line 10)" \
        in err
    assert err[-1].startswith("validate: error: data/ingest/manifest.csv failed validation: 3 rejected CSV row(s) "
                              "(validate.on_invalid is fail")
    assert not (project / "data" / "validated").exists()

    project_for(root, project, on_invalid="drop")
    dropped = run_stage("validate", project)
    assert dropped.returncode == 0, dropped.stderr
    listed = pd.read_csv(project / "reports" / "rejected_rows.csv")
    assert listed["line"].tolist() == [4, 7, 22]
    assert listed["image_id"].tolist() == [rows[2][0], "../../../../etc/passwd", rows[12][0]]
    assert len(read_manifest(project / "data" / "validated" / "manifest.csv")) == FILMS - 2
    assert json.loads((project / "metrics" / "validate.json").read_text())["rejected_rows"] == 3


@pytest.mark.parametrize("link", ["images folder", "data root"])
def test_symlinked_download_gives_the_same_manifest(nih_subset, tmp_path, link):
    from tests.conftest import build_manifest

    root, rows = kaggle_download(nih_subset, tmp_path / "kaggle")
    write_data_entry_2017(root, rows)
    ratios = {"method": "hash", "train": 0.7, "val": 0.15, "test": 0.15}
    real, _ = build_manifest(root, ratios, seed=0)
    if link == "images folder":  # images_001/images -> another disk
        other = tmp_path / "other-disk" / "images"
        other.parent.mkdir()
        (root / "images_001" / "images").rename(other)
        (root / "images_001" / "images").symlink_to(other)
        linked, report = build_manifest(root, ratios, seed=0)
    else:
        (tmp_path / "link").symlink_to(root)
        linked, report = build_manifest(tmp_path / "link", ratios, seed=0)
        linked["path"] = linked["path"].str.replace(str(tmp_path / "link"), str(root), regex=False)
    pd.testing.assert_frame_equal(linked, real)
    assert report["manifest_rows"] == FILMS and report["unused_files"]["count"] == 0
