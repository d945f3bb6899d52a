"""ingest.source folder: a hospital's own films (real NIH PNGs here) and a labels CSV."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.core.labels import FINDINGS
from pipeline.data.folder import build_folder_manifest, folder_patient_id, path_problem
from pipeline.data.manifest import read_manifest
from pipeline.data.nih import DataEntryError
from pipeline.data.validate import validate_manifest
from pipeline.data.validation_summary import format_failure_summary
from tests.conftest import PROJECT_ROOT

RATIOS = {"method": "hash", "train": 0.7, "val": 0.15, "test": 0.15}
LABELS_HEADER = "path,labels,patient_id,age,sex,view"


def nih_rows(nih_subset: Path, names: list[str]) -> dict[str, list[str]]:
    """NIH's 2020 CSV fields for these Image Indexes."""
    import csv
    import gzip

    wanted, found = set(names), {}
    with gzip.open(nih_subset / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as handle:
        for fields in csv.reader(handle):
            if fields[0] in wanted:
                found[fields[0]] = fields
    return found


def make_film_folder(nih_subset: Path, root: Path) -> tuple[Path, dict[str, list[str]]]:
    """Six real films under root (one .PNG, one in ward3/), a stray text file,
    one film no row names, and labels.csv with one row per film plus a bad one."""
    names = sorted(p.name for p in (nih_subset / "images_001" / "images").iterdir())[:7]
    rows = nih_rows(nih_subset, names)
    placed = {names[0]: names[0], names[1]: names[1].replace(".png", ".PNG"), names[2]: f"ward3/{names[2]}",
              names[3]: names[3], names[4]: names[4], names[5]: f"ward3/{names[5]}", names[6]: names[6]}
    for name, relative in placed.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nih_subset / "images_001" / "images" / name, root / relative)
    (root / "ward3" / "README.txt").write_text("films from ward 3\n")
    lines = [LABELS_HEADER]
    for name in names[:6]:
        fields = rows[name]
        relative = placed[name].replace(".PNG", ".png")  # the CSV says .png, the disk .PNG
        view = "" if name == names[4] else fields[6]  # one film without a view
        lines.append(f"{relative},{fields[1]},MRN-{fields[3]},{fields[4]},{fields[5].lower()},{view}")
    lines.insert(4, "../outside.png,Mass,MRN-1,40,M,PA")  # line 5: leaves the root
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root, {n: rows[n] for n in names[:6]} | {"_unlisted": [names[6]]}


@pytest.fixture
def film_folder(nih_subset, tmp_path) -> tuple[Path, dict]:
    return make_film_folder(nih_subset, tmp_path / "hospital")


def test_folder_of_real_films_is_ingested_and_validated(film_folder):
    root, rows = film_folder
    unlisted = rows.pop("_unlisted")[0]
    manifest, rejected, report = build_folder_manifest(root, root / "labels.csv", RATIOS, seed=0)
    assert len(manifest) == 6 and report["rows_in_csv"] == 7
    assert rejected == [{"file": str(root / "labels.csv"), "line": 5, "image_id": "../outside.png",
                         "reason": "path leaves ingest.root ('..')"}]
    by_id = manifest.set_index("image_id")
    names = sorted(rows)
    assert by_id.at[names[1], "path"].endswith(f"{names[1][:-4]}.PNG")  # matched whatever the case
    assert by_id.at[f"ward3/{names[2]}", "path"].endswith(f"hospital/ward3/{names[2]}")
    for name in names:
        image_id = f"ward3/{name}" if name in (names[2], names[5]) else name
        fields = rows[name]
        assert by_id.at[image_id, "patient_id"] == folder_patient_id(f"MRN-{fields[3]}")
        assert by_id.at[image_id, "age"] == int(fields[4]) and by_id.at[image_id, "sex"] == fields[5]
        assert sorted(f for f in FINDINGS if by_id.at[image_id, f]) == sorted(
            [] if fields[1] == "No Finding" else fields[1].split("|"))
    assert by_id.at[names[4], "view"] == "" and (by_id["follow_up"] == 0).all()
    assert report["patient_ids"][f"MRN-{rows[names[0]][3]}"] == by_id.at[names[0], "patient_id"]
    unused = {u["file"].rsplit("hospital/", 1)[1]: u["reason"] for u in report["unused_files"]["first"]}
    assert unused == {"ward3/README.txt": "not an image file name", unlisted: "not in the labels CSV"}

    failed = validate_manifest(manifest, source="folder", rejected_rows=rejected, on_invalid="fail")
    assert failed.success is False and [c for c in failed.failed if c["severity"] == "error"] == []
    dropped = validate_manifest(manifest, source="folder", rejected_rows=rejected, on_invalid="drop")
    assert dropped.success, format_failure_summary(dropped, "folder manifest")


def test_folder_manifest_round_trips_through_csv(film_folder, tmp_path):
    root, _ = film_folder
    manifest, _, _ = build_folder_manifest(root, root / "labels.csv", RATIOS, seed=0)
    path = tmp_path / "manifest.csv"
    manifest.to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_manifest(path), manifest.astype(read_manifest(path).dtypes.to_dict()))


def test_all_test_puts_every_film_in_test(film_folder):
    root, _ = film_folder
    manifest, _, report = build_folder_manifest(root, root / "labels.csv", RATIOS, seed=0, all_test=True)
    assert set(manifest["split"]) == {"test"} and report["split_method"] == "all_test"
    assert report["split_images"] == {"test": 6}


def test_every_bad_labels_row_named_in_one_run(film_folder):
    root, rows = film_folder
    labels = root / "labels.csv"
    first = sorted(k for k in rows if k != "_unlisted")[0]
    labels.write_text(labels.read_text() + "\n".join([
        f"{first},Mass,MRN-9,,M,PA",  # line 9: the same film twice
        "ward3/missing.png,Mass,MRN-9,40,M,PA",
        "C:/films/x.png,Mass,MRN-9,40,M,PA",
        "ward3\\x.png,Mass,MRN-9,40,M,PA",
        "notes.txt,Mass,MRN-9,40,M,PA",
        f"{first.replace('.png', '.jpg')},Pneumonitis,,40,male,LAT",
        "x.png,Mass",
        "ward3/./x.png,Mass,MRN-9,150,F,PA",
    ]) + "\n")
    manifest, rejected, report = build_folder_manifest(root, labels, RATIOS, seed=0)
    assert len(manifest) == 6
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (5, "path leaves ingest.root ('..')"),
        (9, "duplicate path (first on line 2)"),
        (10, f"no such image file under {root}"),
        (11, "path is absolute: write it relative to ingest.root"),
        (12, "path uses '\\': write '/' between folders"),
        (13, "path is not a PNG, JPEG or DICOM file name (.png .jpg .jpeg .dcm)"),
        (14, f"no such image file under {root}; unknown finding 'Pneumonitis' in 'Pneumonitis'; patient_id is empty; "
             "sex must be M or F or empty, got 'male'; view must be PA or AP or empty, got 'LAT'"),
        (15, "unreadable row: expected 6 fields, got 2"),
        (16, "path is not a plain relative path (an empty or '.' part)"),
    ]
    assert report["ages_missing"] == []  # the bad rows' ages are not kept: their rows are not


@pytest.mark.parametrize("text,problem", [
    ("a/b.png", None), ("B.JPEG", None), ("scan.dcm", None), ("x/y/z.JpG", None),
    ("", "path is empty"), ("/etc/x.png", "path is absolute: write it relative to ingest.root"),
    ("../x.png", "path leaves ingest.root ('..')"), ("a/../../x.png", "path leaves ingest.root ('..')"),
    ("a//x.png", "path is not a plain relative path (an empty or '.' part)"),
    ("x.tif", "path is not a PNG, JPEG or DICOM file name (.png .jpg .jpeg .dcm)"),
])
def test_path_problems(text, problem):
    assert path_problem(text) == problem


def test_patient_id_is_a_stable_non_negative_int64():
    assert folder_patient_id("MRN-0001") == folder_patient_id(" MRN-0001 ") == 6498123755764785030
    assert 0 <= folder_patient_id("x") < 2**63 and folder_patient_id("x") != folder_patient_id("y")


def test_labels_header_is_checked(tmp_path):
    (tmp_path / "labels.csv").write_text("path,finding,patient_id,gender\nx.png,Mass,1,M\n")
    with pytest.raises(DataEntryError, match=r"labels.csv: line 1: missing column\(s\) labels; unknown column\(s\) "
                                             r"finding, gender \(columns: path, labels, patient_id, optional "):
        build_folder_manifest(tmp_path, tmp_path / "labels.csv", RATIOS, seed=0)
    # a column named in evaluate.strata is an added column, not a typo
    (tmp_path / "labels.csv").write_text("path,labels,patient_id,Site\nx.png,Mass,1,A\n")
    with pytest.raises(DataEntryError, match="unknown column"):
        build_folder_manifest(tmp_path, tmp_path / "labels.csv", RATIOS, seed=0)
    # past the header: the row itself is checked (its film is not there)
    with pytest.raises(DataEntryError, match="line 2: x.png: no such image file"):
        build_folder_manifest(tmp_path, tmp_path / "labels.csv", RATIOS, seed=0, extra_columns=("Site",))
    with pytest.raises(DataEntryError, match="nope.csv: labels CSV not found"):
        build_folder_manifest(tmp_path, tmp_path / "nope.csv", RATIOS, seed=0)


def test_folder_stages_run_and_drop_goes_on(film_folder, tmp_path):
    root, _ = film_folder
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["ingest"].update(source="folder", root=str(root), labels="labels.csv")
    params["validate"].update(on_invalid="drop", min_split_patients=1)  # six films: one patient in val
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("ingest", "validate"):
        run = subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / f"{stage}.py")], cwd=project,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    assert "1 rejected CSV row(s) (left out, the run goes on" in run.stderr
    assert f"  {root / 'labels.csv'}: line 5: ../outside.png: path leaves ingest.root ('..')" in run.stderr
    validated = read_manifest(project / "data" / "validated" / "manifest.csv")
    assert len(validated) == 6 and validated["image_id"].str.contains("ward3/").sum() == 2
    metrics = json.loads((project / "metrics" / "validate.json").read_text())
    assert metrics["rejected_rows"] == 1 and metrics["failed"] == 0
    assert pd.read_csv(project / "reports" / "rejected_rows.csv")["line"].tolist() == [5]
