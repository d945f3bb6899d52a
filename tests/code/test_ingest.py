"""Ingest on small NIH-format roots made of real PNG files."""
import gzip
import os

import pandas as pd
import pytest

from pipeline.ingest import build_manifest, read_boxes
from pipeline.labels import FINDINGS
from pipeline.manifest import MANIFEST_COLUMNS
from pipeline.nih import MetadataError, index_images, read_nih_metadata

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
    with pytest.raises(MetadataError, match="1 listed image\\(s\\) not on disk, 1 image\\(s\\) on disk"):
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
    "line,problem",
    [
        ("00000001_000.png,Mass,0,1,40,M", "line 2: expected 11 fields, got 6"),
        ("00000001_000.png,Pneumonitis,0,1,40,M,PA,48,48,0.1,0.1,", "line 2: unknown finding 'Pneumonitis'"),
        ("../x.png,Mass,0,1,40,M,PA,48,48,0.1,0.1,", "line 2: Image Index '../x.png' is not a file name"),
        ("/etc/passwd,Mass,0,1,40,M,PA,48,48,0.1,0.1,", "line 2: Image Index '/etc/passwd'"),
        ("00000001_001.png,Mass,0,1,40,M,PA,48,48,0.1,0.1,", "line 3: duplicate Image Index '00000001_001.png'"),
        ("00000001_000.png,Mass,0,1,forty,M,PA,48,48,0.1,0.1,", "line 2: age is not an integer: 'forty'"),
    ],
)
def test_bad_metadata_names_file_and_line(small_nih_root, line, problem):
    path = rewrite_line(small_nih_root, 2, line)
    with pytest.raises(MetadataError, match=problem) as caught:
        build_manifest(small_nih_root, RATIOS, seed=0)
    assert str(path) in str(caught.value)


def test_wrong_header_named(small_nih_root):
    rewrite_line(small_nih_root, 1, "a,b,c")
    with pytest.raises(MetadataError, match="line 1: header"):
        build_manifest(small_nih_root, RATIOS, seed=0)


def test_symlink_outside_root_rejected(small_nih_root, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    target = small_nih_root / "images" / "00000001_000.png"
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(MetadataError, match="symlink points outside the data root"):
        index_images(small_nih_root)


def test_no_image_on_disk_is_an_error(small_nih_root):
    for image in (small_nih_root / "images").iterdir():
        image.unlink()
    with pytest.raises(MetadataError, match="none of the 12 images"):
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
    metadata = read_nih_metadata(nih_subset / "Data_Entry_2017_v2020.csv.gz")
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
