"""Ingest: from an NIH-format data root to the manifest (one row per image)."""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from pipeline.core.labels import BOX_LABEL_ALIASES, FINDINGS, LabelError, parse_finding_labels
from pipeline.data.manifest import MANIFEST_COLUMNS
from pipeline.data.nih import (
    BBOX_FILE_NAME,
    IMAGE_ID_PATTERN,
    OFFICIAL_TEST_LIST,
    OFFICIAL_TRAIN_VAL_LIST,
    DataEntryError,
    check_source,
    find_metadata_csv,
    index_images,
    read_data_entry,
    read_official_lists,
)
from pipeline.data.split import assign_official_splits, assign_splits_by_method, split_settings


def display_path(path: Path) -> str:
    """Relative to the project root when inside it, so the manifest (and its
    DVC hash) does not depend on where the project is cloned."""
    absolute = path.absolute()
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return absolute.as_posix()


def label_matrix(metadata: pd.DataFrame, source: Path) -> pd.DataFrame:
    """The 14 multi-hot columns, with an error naming the line of a bad label."""
    rows = []
    for text, line in zip(metadata["finding_labels"], metadata["line"]):
        try:
            rows.append(parse_finding_labels(text))
        except LabelError as exc:
            raise DataEntryError(f"{source}: line {line}: {exc}") from exc
    return pd.DataFrame(rows, columns=list(FINDINGS), index=metadata.index, dtype="int64")


def assign_splits(manifest: pd.DataFrame, split: dict, seed: int, root: Path) -> pd.Series:
    """The split of each manifest row by `ingest.split` (method and ratios):
    hash buckets, stratified random on the 14 finding columns, or official
    (NIH's lists from root, val carved by hash buckets)."""
    method, ratios = split_settings(split)
    labels = manifest[list(FINDINGS)]
    if method == "official":
        test_ids, train_val_ids = read_official_lists(root)
        return assign_official_splits(
            manifest["image_id"], manifest["patient_id"], test_ids, train_val_ids, ratios, seed, labels,
            list_names=(str(root / OFFICIAL_TEST_LIST), str(root / OFFICIAL_TRAIN_VAL_LIST)),
        )
    return assign_splits_by_method(method, manifest["patient_id"], ratios, seed, labels)


def build_manifest(
    root: Path,
    split: dict,
    seed: int,
    require_all_images: bool = False,
    source: str = "nih",
) -> tuple[pd.DataFrame, dict]:
    """Join the metadata CSV with the images on disk and split patient-wise.

    `split`: params.yaml's ingest.split (train/val/test ratios, optional
    method). `source`: the root's layout, nih (Box or Kaggle full data set)
    or kaggle-sample. Returns the manifest and a report of what was found,
    kept and dropped.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataEntryError(f"{root}: data root is not a directory")
    csv_path = find_metadata_csv(root, source)
    metadata = read_data_entry(csv_path)
    bad_ids = ~metadata["image_id"].str.match(IMAGE_ID_PATTERN.pattern)
    if bad_ids.any():
        first = metadata.index[bad_ids][0]
        raise DataEntryError(
            f"{csv_path}: line {metadata.at[first, 'line']}: Image Index "
            f"{metadata.at[first, 'image_id']!r} is not a file name like 00000001_000.png"
        )
    duplicated = metadata["image_id"].duplicated()
    if duplicated.any():
        first = metadata.index[duplicated][0]
        raise DataEntryError(
            f"{csv_path}: line {metadata.at[first, 'line']}: duplicate Image Index "
            f"{metadata.at[first, 'image_id']!r}"
        )
    images = index_images(root, source)
    on_disk = metadata["image_id"].isin(images.keys())
    unlisted = sorted(set(images) - set(metadata["image_id"]))
    missing = int((~on_disk).sum())
    if require_all_images and (missing or unlisted):
        raise DataEntryError(
            f"{root}: {missing} listed image(s) not on disk, {len(unlisted)} image(s) on disk "
            f"not in {csv_path.name} (ingest.require_all_images is true)"
        )
    kept = metadata[on_disk].copy()
    if kept.empty:
        raise DataEntryError(f"{root}: none of the {len(metadata)} images in {csv_path.name} is on disk")
    labels = label_matrix(kept, csv_path)
    manifest = pd.concat([kept, labels], axis=1)
    manifest["path"] = [display_path(images[i]) for i in manifest["image_id"]]
    manifest["split"] = assign_splits(manifest, split, seed, root)
    manifest = manifest[list(MANIFEST_COLUMNS)].reset_index(drop=True)
    report = {
        "metadata_csv": display_path(csv_path),
        "rows_in_csv": len(metadata),
        "images_on_disk": len(images),
        "rows_without_image": missing,
        "images_without_row": len(unlisted),
        "images_without_row_examples": unlisted[:10],
        "manifest_rows": len(manifest),
        "patients": int(manifest["patient_id"].nunique()),
        "split_method": split_settings(split)[0],
        "split_images": {s: int(n) for s, n in manifest["split"].value_counts().sort_index().items()},
    }
    return manifest, report


def read_boxes(root: Path, image_ids: set[str]) -> pd.DataFrame:
    """NIH's BBox_List_2017.csv (if present) as image_id, finding, x, y, w, h,
    for the given images; coordinates are pixels of the original image."""
    path = Path(root) / BBOX_FILE_NAME
    rows = []
    if path.is_file():
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if not ",".join(header).startswith("Image Index,Finding Label"):
                raise DataEntryError(f"{path}: line 1: not NIH's box list header: {','.join(header)[:80]}")
            for line, fields in enumerate(reader, start=2):
                fields = [f for f in fields if f != ""]
                if not fields:
                    continue
                if len(fields) != 6:
                    raise DataEntryError(f"{path}: line {line}: expected 6 fields, got {len(fields)}")
                image_id, finding = fields[0], BOX_LABEL_ALIASES.get(fields[1], fields[1])
                if finding not in FINDINGS:
                    raise DataEntryError(f"{path}: line {line}: unknown finding {finding!r}")
                try:
                    box = [float(v) for v in fields[2:]]
                except ValueError as exc:
                    raise DataEntryError(f"{path}: line {line}: box coordinates are not numbers: {exc}") from exc
                if image_id in image_ids:
                    rows.append([image_id, finding, *box])
    return pd.DataFrame(rows, columns=["image_id", "finding", "x", "y", "w", "h"])


def ingest_data_root(
    source: str, root: Path, split: dict, seed: int, require_all_images: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The ingest stage: read the data root (the phantom stage's output, or the
    user's NIH or Kaggle download, by `source`) into the manifest and the box
    list of its images. Returns (manifest, boxes, report).

    The stage's DVC deps include the root itself, so a changed metadata CSV,
    box list, split list or set of images reruns it (see dvc.yaml)."""
    if source == "phantom":
        if not (root / "images").is_dir():
            raise DataEntryError(f"{root}: no phantom here; the phantom stage makes it (dvc repro)")
        layout = "nih"  # the phantom is written in NIH's Box layout
    else:
        check_source(source)
        layout = source
    manifest, report = build_manifest(root, split, seed, require_all_images, source=layout)
    boxes = read_boxes(root, set(manifest["image_id"]))
    return manifest, boxes, {**report, "source": source, "boxes": len(boxes)}
