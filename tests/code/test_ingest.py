"""Ingest on small NIH-format roots made of real PNG files."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.core.labels import FINDINGS
from pipeline.data.ingest import build_nih_manifest, read_boxes
from pipeline.data.manifest import MANIFEST_COLUMNS, read_manifest
from pipeline.data.nih import DataEntryError, read_data_entry, scan_image_folders
from pipeline.records.imaging import ImageError, load_xray
from tests.conftest import PROJECT_ROOT, build_manifest

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_manifest_from_nih_root(small_nih_root):
    manifest, report = build_manifest(small_nih_root, RATIOS, seed=0)
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert len(manifest) == 12 and report["patients"] == 6
    row = manifest[manifest["image_id"] == "00000003_000.png"].iloc[0]
    assert row["Effusion"] == 1 and row["Nodule"] == 1 and row[list(FINDINGS)].sum() == 2
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()
    assert all(os.path.isfile(p) for p in manifest["path"])


def test_partial_download_is_counted(small_nih_root):
    (small_nih_root / "images" / "00000001_000.png").unlink()
    (small_nih_root / "images" / "00000099_000.png").write_bytes(b"x")
    manifest, report = build_manifest(small_nih_root, RATIOS, seed=0)
    assert len(manifest) == 11
    assert report["rows_without_image"] == 1 and report["images_without_row"] == 1
    with pytest.raises(DataEntryError, match="1 listed image\\(s\\) not on disk, 1 image\\(s\\) on disk"):
        build_manifest(small_nih_root, RATIOS, seed=0, require_all_images=True)


def test_kaggle_layout_and_v2020_gz(small_nih_root):
    kaggle = small_nih_root / "images_001" / "images"
    kaggle.parent.mkdir()
    (small_nih_root / "images").rename(kaggle)
    csv_2017 = small_nih_root / "Data_Entry_2017.csv"
    lines = [line.rstrip(",") for line in csv_2017.read_text().splitlines()]
    with gzip.open(small_nih_root / "Data_Entry_2017_v2020.csv.gz", "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    csv_2017.unlink()
    manifest, report = build_manifest(small_nih_root, RATIOS, seed=0)
    assert len(manifest) == 12 and report["metadata_csv"].endswith("v2020.csv.gz")


def rewrite_line(root, line_number, new_line):
    path = root / "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    lines[line_number - 1] = new_line
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "line,image_id,reason",
    [
        ("00000001_000.png,Mass,0,1,40,M", "00000001_000.png", "unreadable row: expected 11 fields, got 6: "),
        ("00000001_000.png,Mass,0,one,40,M,PA,48,48,0.1,0.1,", "00000001_000.png",
         "unreadable row: Patient ID is not an integer: 'one'"),
        ("00000001_000.png,Mass,0.5,1,40,M,PA,48,48,0.1,0.1,", "00000001_000.png",
         "unreadable row: Follow-up # is not an integer: '0.5'"),
        ("00000001_000.png,Pneumonitis,0,1,40,M,PA,48,48,0.1,0.1,", "00000001_000.png",
         "unknown finding 'Pneumonitis' in 'Pneumonitis'"),
        ("../x.png,Mass,0,1,40,M,PA,48,48,0.1,0.1,", "../x.png",
         "Image Index is a path, not a plain file name like 00000001_000.png"),
        ("/etc/passwd,Mass,0,1,40,M,PA,48,48,0.1,0.1,", "/etc/passwd",
         "Image Index is a path, not a plain file name like 00000001_000.png"),
        ("scan.jpg,Mass,0,1,40,M,PA,48,48,0.1,0.1,", "scan.jpg",
         "Image Index is not a file name like 00000001_000.png"),
        ("00000001_001.png,Mass,0,1,40,M,PA,48,48,0.1,0.1,", "00000001_001.png",
         "duplicate Image Index (first on line 2)"),
    ],
)
def test_bad_row_is_set_aside_with_file_line_and_reason(small_nih_root, line, image_id, reason):
    path = rewrite_line(small_nih_root, 2, line)
    manifest, rejected, report = build_nih_manifest(small_nih_root, RATIOS, seed=0)
    duplicate = reason.startswith("duplicate")
    assert [(r["file"], r["line"], r["image_id"]) for r in rejected] == [(str(path), 3 if duplicate else 2, image_id)]
    assert rejected[0]["reason"].startswith(reason)
    assert len(manifest) == 11 and report["rejected_rows"] == 1  # the other rows go on
    assert report["rejected_rows_examples"][0].startswith(f"{path}: line {rejected[0]['line']}: {image_id}: ")


def test_every_row_problem_in_one_run(small_nih_root):
    # line n holds patient (n - 2) // 2 + 1's follow-up (n - 2) % 2; patient 5 is 35
    path = small_nih_root / "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    lines[6 - 1] = lines[6 - 1].replace("Effusion|Nodule", "Effusion|Pneumonitis")  # 00000003_000.png
    lines[8 - 1] = lines[3 - 1]  # 00000001_001.png again, over 00000004_000.png
    lines[10 - 1] = lines[10 - 1].replace("00000005_000.png", "../../../../etc/passwd")
    lines[11 - 1] = lines[11 - 1].replace(",35,", ",414,")  # 00000005_001.png
    lines.append("00000099_000.png,Mass,0,99")  # line 14
    path.write_text("\n".join(lines) + "\n")
    manifest, rejected, report = build_nih_manifest(small_nih_root, RATIOS, seed=0)
    assert [(r["file"], r["line"], r["image_id"], r["reason"]) for r in rejected] == [
        (str(path), 6, "00000003_000.png", "unknown finding 'Pneumonitis' in 'Effusion|Pneumonitis'"),
        (str(path), 8, "00000001_001.png", "duplicate Image Index (first on line 3)"),
        (str(path), 10, "../../../../etc/passwd", "Image Index is a path, not a plain file name like 00000001_000.png"),
        (str(path), 14, "00000099_000.png", "unreadable row: expected 11 fields, got 4: 00000099_000.png,Mass,0,99"),
    ]
    assert report["ages_missing"] == [{"file": str(path), "line": 11, "image_id": "00000005_001.png",
                                       "value": "414", "reason": "age 414 outside 0..120"}]
    age = manifest.set_index("image_id")["age"]
    assert pd.isna(age["00000005_001.png"]) and age["00000006_000.png"] == 36
    assert str(manifest["age"].dtype) == "Int64" and len(manifest) == 9
    # the images no usable row names are listed, not skipped in silence
    unused = {Path(u["file"]).name: u["reason"] for u in report["unused_files"]["first"]}
    assert unused == {"00000003_000.png": "its row in the metadata CSV was rejected",
                      "00000004_000.png": "not in the metadata CSV",
                      "00000005_000.png": "not in the metadata CSV"}


def test_bad_ages_are_kept_as_missing(small_nih_root, tmp_path):
    path = small_nih_root / "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    for line, age in ((2, "148"), (3, "forty"), (4, "")):
        fields = lines[line - 1].split(",")
        fields[4] = age
        lines[line - 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    manifest, rejected, report = build_nih_manifest(small_nih_root, RATIOS, seed=0)
    assert rejected == [] and len(manifest) == 12
    assert [(n["line"], n["value"], n["reason"]) for n in report["ages_missing"]] == [
        (2, "148", "age 148 outside 0..120"), (3, "forty", "age 'forty' is not a number of years"),
        (4, "", "age missing")]
    written = tmp_path / "manifest.csv"
    manifest.to_csv(written, index=False)
    assert read_manifest(written)["age"].isna().sum() == 3


def test_unusable_files_still_stop_ingest(small_nih_root):
    path = small_nih_root / "Data_Entry_2017.csv"
    header = path.read_text().splitlines()[0]
    path.write_text(header + "\n" + "".join(f"0000000{i}_000.png,Mass,0,{i}\n" for i in range(3)))
    with pytest.raises(DataEntryError, match="Data_Entry_2017.csv: none of its 3 rows is usable, e.g. .*line 2: "
                                             "00000000_000.png: unreadable row"):
        build_manifest(small_nih_root, RATIOS, seed=0)
    path.write_text("")
    with pytest.raises(DataEntryError, match="empty file"):
        build_manifest(small_nih_root, RATIOS, seed=0)


def test_wrong_header_named(small_nih_root):
    rewrite_line(small_nih_root, 1, "a,b,c")
    with pytest.raises(DataEntryError, match="line 1: missing required column\\(s\\) 'Image Index'"):
        build_manifest(small_nih_root, RATIOS, seed=0)


def test_missing_required_column_named(small_nih_root):
    path = small_nih_root / "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace("View Position,", "")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataEntryError,
                       match="Data_Entry_2017.csv: line 1: missing required column\\(s\\) 'View Position'"):
        build_manifest(small_nih_root, RATIOS, seed=0)


def without_root(manifest: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The manifest with its paths made relative to the data root."""
    return manifest.assign(path=[str(Path(p).relative_to(root)) for p in manifest["path"]])


def test_symlinked_image_folder_on_another_disk(small_nih_root, tmp_path):
    real, _ = build_manifest(small_nih_root, RATIOS, seed=0)
    other_disk = tmp_path / "other-disk" / "nih-images"
    other_disk.parent.mkdir()
    (small_nih_root / "images").rename(other_disk)
    (small_nih_root / "images_001").mkdir()
    (small_nih_root / "images_001" / "images").symlink_to(other_disk)
    linked, report = build_manifest(small_nih_root, RATIOS, seed=0)
    expected = real.assign(path=[p.replace("/images/", "/images_001/images/") for p in real["path"]])
    pd.testing.assert_frame_equal(linked, expected)
    assert report["unused_files"]["count"] == 0 and report["not_files"]["count"] == 0


def test_symlinked_data_root_and_image_files(small_nih_root, tmp_path):
    real, _ = build_manifest(small_nih_root, RATIOS, seed=0)
    outside = tmp_path / "elsewhere.png"
    (small_nih_root / "images" / "00000001_000.png").rename(outside)
    (small_nih_root / "images" / "00000001_000.png").symlink_to(outside)
    link = tmp_path / "nih-link"
    link.symlink_to(small_nih_root)
    linked, _ = build_manifest(link, RATIOS, seed=0)
    pd.testing.assert_frame_equal(without_root(linked, link), without_root(real, small_nih_root))
    assert scan_image_folders(link).images["00000001_000.png"].read_bytes() == outside.read_bytes()


def test_dangling_link_is_kept_for_preprocess_to_quarantine(small_nih_root):
    image = small_nih_root / "images" / "00000001_000.png"
    image.unlink()
    image.symlink_to(small_nih_root / "gone.png")
    manifest, report = build_manifest(small_nih_root, RATIOS, seed=0)
    assert len(manifest) == 12
    assert report["not_files"] == {"count": 1, "examples": [str(image)]}
    path = manifest.set_index("image_id").at["00000001_000.png", "path"]
    with pytest.raises(ImageError, match=f"^{path}: cannot read: No such file or directory$"):
        load_xray(path, 32)  # reads as preprocess does (read_image_bytes), which quarantines the film


def test_upper_case_extension_matches_and_unused_files_are_named(small_nih_root):
    images = small_nih_root / "images"
    (images / "00000001_000.png").rename(images / "00000001_000.PNG")
    (images / "00000002_000.png").rename(images / "00000002_000.Png")
    (images / "00000002_001.PNG").write_bytes((images / "00000002_001.png").read_bytes())
    (images / "Thumbs.db").write_bytes(b"x")
    (images / "00000042_000.png").write_bytes(b"x")
    (images / "subfolder").mkdir()
    manifest, report = build_manifest(small_nih_root, RATIOS, seed=0)
    assert len(manifest) == 12
    paths = manifest.set_index("image_id")["path"]
    assert paths["00000001_000.png"].endswith("images/00000001_000.PNG")
    assert paths["00000002_000.png"].endswith("images/00000002_000.Png")
    unused = report["unused_files"]
    assert {Path(u["file"]).name: u["reason"] for u in unused["first"]} == {
        "00000002_001.png": "same Image Index found twice, first wins",
        "Thumbs.db": "not an image file name",
        "00000042_000.png": "not in the metadata CSV",
    }
    assert paths["00000002_001.png"].endswith("00000002_001.PNG")  # sorted: upper case first
    assert unused["count"] == 3 and unused["by_reason"] == {
        "same Image Index found twice, first wins": 1, "not an image file name": 1, "not in the metadata CSV": 1}


def test_no_image_on_disk_is_an_error(small_nih_root):
    for image in (small_nih_root / "images").iterdir():
        image.unlink()
    with pytest.raises(DataEntryError, match="none of the 12 images"):
        build_manifest(small_nih_root, RATIOS, seed=0)


def test_boxes_read_in_nih_format(small_nih_root):
    (small_nih_root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000002_000.png,Mass,10.5,20,30,40,,,\n"
        "00000077_000.png,Mass,1,2,3,4,,,\n"
    )
    boxes = read_boxes(small_nih_root, {"00000002_000.png"})
    assert boxes.to_dict("records") == [
        {"image_id": "00000002_000.png", "finding": "Mass", "x": 10.5, "y": 20.0, "w": 30.0, "h": 40.0}
    ]


def test_real_full_metadata_csv(nih_subset):
    metadata = read_data_entry(nih_subset / "Data_Entry_2017_v2020.csv.gz")
    assert len(metadata) == 112_120 and metadata["patient_id"].nunique() == 30_805


def test_real_partial_download(nih_subset):
    manifest, report = build_manifest(nih_subset, RATIOS, seed=0)
    assert report["rows_in_csv"] == 112_120
    assert report["images_on_disk"] == 300 and report["manifest_rows"] == 300
    assert report["rows_without_image"] == 112_120 - 300
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()
    boxes = read_boxes(nih_subset, set(manifest["image_id"]))
    assert set(boxes["finding"]) <= set(FINDINGS)
    assert pd.Series(manifest["path"]).str.contains("images_001/images/").all()


# --------------------------------------------------------------------------
# Kaggle's NIH sample (ingest.source: kaggle-sample)

SAMPLE_ROWS = [
    ("00000013_005.png", "Emphysema|Infiltration", 5, 13, "060Y", "M", "AP"),
    ("00000013_026.png", "Cardiomegaly|Emphysema", 26, 13, "057Y", "M", "AP"),
    ("00000032_001.png", "No Finding", 1, 32, "055Y", "F", "PA"),
    ("00000061_025.png", "Effusion", 25, 61, "077Y", "M", "AP"),
    ("00000099_000.png", "Hernia", 0, 99, "013M", "F", "PA"),
    ("00000111_000.png", "Mass|Nodule", 0, 111, "001D", "M", "PA"),
]


def test_kaggle_sample_layout(tmp_path):
    from tests.conftest import make_kaggle_sample_root

    root = make_kaggle_sample_root(tmp_path / "sample-root", SAMPLE_ROWS)
    manifest, report = build_manifest(root, RATIOS, seed=0, source="kaggle-sample")
    assert len(manifest) == 6 and report["metadata_csv"].endswith("sample_labels.csv")
    ages = dict(zip(manifest["image_id"], manifest["age"]))
    assert ages["00000013_005.png"] == 60 and ages["00000099_000.png"] == 1 and ages["00000111_000.png"] == 0
    assert manifest["path"].str.contains("sample/images/").all()
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()
    row = manifest[manifest["image_id"] == "00000111_000.png"].iloc[0]
    assert row["Mass"] == 1 and row["Nodule"] == 1 and row[list(FINDINGS)].sum() == 2


def test_kaggle_sample_images_one_level_down(tmp_path):
    from tests.conftest import make_kaggle_sample_root

    root = make_kaggle_sample_root(tmp_path / "s", SAMPLE_ROWS, images="images")
    manifest, _ = build_manifest(root, RATIOS, seed=0, source="kaggle-sample")
    assert len(manifest) == 6


def test_kaggle_sample_bad_age_kept_as_missing(tmp_path):
    from tests.conftest import make_kaggle_sample_root

    rows = [*SAMPLE_ROWS[:2], ("00000032_001.png", "No Finding", 1, 32, "55 years", "F", "PA"),
            ("00000061_025.png", "Effusion", 25, 61, "411Y", "M", "AP")]
    root = make_kaggle_sample_root(tmp_path / "s", rows)
    manifest, report = build_manifest(root, RATIOS, seed=0, source="kaggle-sample")
    assert len(manifest) == 4 and manifest["age"].isna().sum() == 2
    assert [(n["line"], n["image_id"], n["reason"]) for n in report["ages_missing"]] == [
        (4, "00000032_001.png", "age '55 years' is not a number of years"),
        (5, "00000061_025.png", "age 411Y outside 0..120")]


def test_wrong_source_gets_a_hint(tmp_path, small_nih_root):
    from tests.conftest import make_kaggle_sample_root

    sample = make_kaggle_sample_root(tmp_path / "s", SAMPLE_ROWS)
    with pytest.raises(DataEntryError, match="set ingest.source to kaggle-sample"):
        build_manifest(sample, RATIOS, seed=0)
    with pytest.raises(DataEntryError, match="set ingest.source to nih"):
        build_manifest(small_nih_root, RATIOS, seed=0, source="kaggle-sample")
    with pytest.raises(DataEntryError, match="not an NIH data-root layout: .box. \\(one of nih, kaggle-sample\\)"):
        build_manifest(small_nih_root, RATIOS, seed=0, source="box")


def test_real_kaggle_sample_labels(nih_subset):
    metadata = read_data_entry(nih_subset / "sample_labels.csv")
    assert len(metadata) == 5_606
    # NIH's 2017 typo, 411Y on line 4,244, is kept as a missing age; every other age is in range
    assert metadata.loc[metadata["age"].isna(), ["image_id", "line"]].values.tolist() == [["00020900_002.png", 4244]]
    assert metadata["age"].dropna().between(0, 120).all()
    assert metadata.loc[metadata["image_id"] == "00000013_005.png", "age"].item() == 60
    assert set(metadata["view"]) == {"PA", "AP"} and set(metadata["sex"]) == {"M", "F"}
    assert (metadata["orig_width"] > 0).all()


# --------------------------------------------------------------------------
# ingest.split.method: official


def write_lists(root, test, train_val):
    (root / "test_list.txt").write_text("".join(f"{i}\n" for i in test))
    (root / "train_val_list.txt").write_text("".join(f"{i}\n" for i in train_val))


def test_official_split_from_the_root_lists(small_nih_root):
    ids = sorted(p.name for p in (small_nih_root / "images").iterdir())
    test = [i for i in ids if i.startswith(("00000002", "00000005"))]
    write_lists(small_nih_root, test + ["00000777_000.png"], [i for i in ids if i not in test])
    manifest, report = build_manifest(small_nih_root, {"method": "official", **RATIOS}, seed=0)
    assert sorted(manifest.loc[manifest["split"] == "test", "image_id"]) == test
    assert report["split_method"] == "official"
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()


def test_official_split_names_unlisted_images(small_nih_root):
    write_lists(small_nih_root, ["00000001_000.png", "00000001_001.png"],
                [f"0000000{p}_00{f}.png" for p in range(2, 6) for f in range(2)])
    with pytest.raises(ValueError, match="2 image\\(s\\) are in neither .*test_list.txt nor .*: "
                                         "00000006_000.png, 00000006_001.png"):
        build_manifest(small_nih_root, {"method": "official", **RATIOS}, seed=0)


def test_official_split_needs_the_lists(small_nih_root):
    with pytest.raises(DataEntryError, match="test_list.txt: not found; ingest.split.method official"):
        build_manifest(small_nih_root, {"method": "official", **RATIOS}, seed=0)


def test_bad_list_line_named(small_nih_root):
    write_lists(small_nih_root, ["00000001_000.png", "../etc/passwd"], [])
    with pytest.raises(DataEntryError, match="test_list.txt: line 2: '../etc/passwd' is not an Image Index"):
        build_manifest(small_nih_root, {"method": "official", **RATIOS}, seed=0)


# --------------------------------------------------------------------------
# The stage functions (phantom stage, ingest stage)


def stage_params(tmp_path, **ingest):
    """The project's params.yaml with a 6-film phantom, a random split and `ingest` changed."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["seed"] = 3
    params["ingest"].update({"source": "phantom", "root": "data/ingest/phantom", "require_all_images": False,
                             "phantom": {**params["ingest"]["phantom"], "n_images": 6, "image_size": 64,
                                         "subgroup_gap": 0},
                             "split": {"method": "random", **RATIOS}, "workers": 1, **ingest})
    return params


def run_stage_script(stage: str, project: Path, params: dict) -> subprocess.CompletedProcess:
    """`python src/<stage>.py` as DVC runs it: in the project folder, reading its params.yaml."""
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / f"{stage}.py")], cwd=project,
                          capture_output=True, text=True, timeout=300)


def test_phantom_then_ingest_stage(tmp_path):
    params = stage_params(tmp_path)
    phantom = run_stage_script("phantom", tmp_path, params)
    assert phantom.returncode == 0, phantom.stderr
    assert len(list((tmp_path / "data/ingest/phantom/images").iterdir())) == 6
    ingest = run_stage_script("ingest", tmp_path, params)
    assert ingest.returncode == 0, ingest.stderr
    report = json.loads((tmp_path / "reports/ingest.json").read_text())
    assert report["manifest_rows"] == 6 and report["source"] == "phantom"
    manifest = pd.read_csv(tmp_path / "data/ingest/manifest.csv")
    assert manifest["path"].str.startswith("data/ingest/phantom/images/").all()
    assert (tmp_path / "data/ingest/boxes.csv").is_file()
    assert (tmp_path / "data/ingest/rejected_rows.csv").read_text() == "file,line,image_id,reason\n"
    assert json.loads((tmp_path / "metrics/ingest.json").read_text()) == {
        "images": 6}


def test_ingest_stage_writes_rejected_rows_and_says_so(tmp_path, small_nih_root):
    rewrite_line(small_nih_root, 3, "00000001_001.png,Pneumonitis,1,1,31,M,AP,48,48,0.1,0.1,")
    (small_nih_root / "images" / "notes.txt").write_text("x")
    ingest = run_stage_script("ingest", tmp_path, stage_params(tmp_path, source="nih", root=str(small_nih_root)))
    assert ingest.returncode == 0, ingest.stderr
    rejected = pd.read_csv(tmp_path / "data/ingest/rejected_rows.csv")
    assert rejected[["line", "image_id"]].values.tolist() == [[3, "00000001_001.png"]]
    err = ingest.stderr.splitlines()
    assert any(line.startswith("ingest: 1 CSV row(s) rejected, listed in data/ingest/rejected_rows.csv")
               for line in err)
    assert "ingest: 2 file(s) in the image folders not used (not an image file name: 1, its row in the metadata " \
           "CSV was rejected: 1); the first 50 in reports/ingest.json" in err


def test_phantom_stage_writes_only_a_note_for_real_data(tmp_path, small_nih_root):
    params = stage_params(tmp_path, source="nih", root=str(small_nih_root))
    assert run_stage_script("phantom", tmp_path, params).returncode == 0
    assert [p.name for p in (tmp_path / "data/ingest/phantom").iterdir()] == ["NOT_USED.txt"]
    ingest = run_stage_script("ingest", tmp_path, params)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads((tmp_path / "reports/ingest.json").read_text())["manifest_rows"] == 12


def test_phantom_source_needs_root_at_paths_phantom(tmp_path):
    ingest = run_stage_script("ingest", tmp_path, stage_params(tmp_path, root="elsewhere"))
    assert ingest.returncode == 1
    assert ingest.stderr.strip().splitlines() == [
        "ingest: error: params.yaml: ingest.root is elsewhere but must be data/ingest/phantom (paths.phantom) "
        "when ingest.source is phantom"
    ]
