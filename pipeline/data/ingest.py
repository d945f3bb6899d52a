"""Ingest: from a data root to the manifest (one row per image).

A CSV row ingest cannot use (unreadable, an Image Index that is not a plain
NIH file name, a duplicate, an unknown finding) is set aside as a rejected
row, all of them in one run; the validate stage decides whether they stop
the pipeline (validate.on_invalid). Ingest itself stops only when the CSV is
unusable (missing, empty, wrong header) or no image is left.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.core.labels import BOX_LABEL_ALIASES, FINDINGS, LabelError, parse_finding_labels
from pipeline.data.csv_file import csv_file, csv_rows
from pipeline.data.manifest import MANIFEST_COLUMNS, display_path
from pipeline.data.nih import (
    BBOX_FILE_NAME,
    IMAGE_ID_PATTERN,
    NOT_IN_CSV,
    OFFICIAL_TEST_LIST,
    OFFICIAL_TRAIN_VAL_LIST,
    ROW_REJECTED,
    DataEntryError,
    find_metadata_csv,
    read_metadata,
    read_official_lists,
    scan_image_folders,
)
from pipeline.data.row_problems import (
    by_line,
    duplicate_reasons,
    format_rejected_row,
    parse_labels,
    rejected_row,
    unused_files_line,
    unused_files_report,
)
from pipeline.data.split import assign_official_splits, assign_splits_by_method, split_settings

__all__ = ["build_nih_manifest", "display_path", "label_matrix", "read_boxes"]


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


def image_index_problem(image_id: str) -> str | None:
    """Why an Image Index cannot name a file in the image folders, or None.
    This is what keeps ingest inside the data root: links are followed, but a
    CSV row can only ever name a plain file in one of the layout's folders."""
    if IMAGE_ID_PATTERN.match(image_id):
        return None
    if not image_id:
        return "Image Index is empty"
    if "/" in image_id or "\\" in image_id or image_id.startswith(".."):
        return "Image Index is a path, not a plain file name like 00000001_000.png"
    return "Image Index is not a file name like 00000001_000.png"


def usable_rows(metadata: pd.DataFrame, file: str) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(rows, their 14 label columns, rejected rows): every row with a bad
    Image Index, a repeated one (the second and later) or an unknown finding
    is set aside, with all its problems in one reason."""
    reasons: list[list[str]] = [[] for _ in range(len(metadata))]
    for i, problem in enumerate(map(image_index_problem, metadata["image_id"])):
        if problem:
            reasons[i].append(problem)
    for i, problem in enumerate(duplicate_reasons(metadata["image_id"], metadata["line"], "Image Index")):
        if problem:
            reasons[i].append(problem)
    multi_hot, label_problems = parse_labels(metadata["finding_labels"])
    for i, problem in enumerate(label_problems):
        if problem:
            reasons[i].append(problem)
    bad = pd.Series([bool(r) for r in reasons], index=metadata.index)
    rejected = [rejected_row(file, line, image_id, "; ".join(r)) for line, image_id, r
                in zip(metadata["line"], metadata["image_id"], reasons) if r]
    kept = metadata[~bad]
    labels = pd.DataFrame([h for h, b in zip(multi_hot, bad) if not b], columns=list(FINDINGS),
                          index=kept.index, dtype="int64")
    return kept, labels, rejected


def read_usable_metadata(csv_path: Path):
    """(the CSV as read, its usable rows, their labels, every rejected row by
    line); DataEntryError when no row is usable."""
    table = read_metadata(csv_path)
    metadata, labels, problem_rows = usable_rows(table.frame, str(csv_path))
    rejected = by_line(table.rejected + problem_rows)
    if metadata.empty:
        example = f", e.g. {format_rejected_row(rejected[0])}" if rejected else ""
        raise DataEntryError(f"{csv_path}: none of its {len(table.frame) + len(table.rejected)} rows is "
                             f"usable{example}")
    return table, metadata, labels, rejected


def files_without_rows(scan, listed: set[str], rejected: list[dict]) -> tuple[list[str], list[dict]]:
    """(image names on disk that no usable row lists, every file ingest leaves
    unused with its reason: the scan's own and those, their row rejected or absent)."""
    rejected_ids = {row["image_id"] for row in rejected}
    unlisted = sorted(key for key in scan.images if key not in listed)
    return unlisted, scan.unused + [
        {"file": scan.images[key], "reason": ROW_REJECTED if key in rejected_ids else NOT_IN_CSV} for key in unlisted
    ]


def build_nih_manifest(
    root: Path,
    split: dict,
    seed: int,
    require_all_images: bool = False,
    source: str = "nih",
) -> tuple[pd.DataFrame, list[dict], dict]:
    """Join the metadata CSV with the images on disk and split patient-wise.

    `split`: params.yaml's ingest.split (train/val/test ratios, optional
    method). `source`: the root's layout, nih (Box or Kaggle full data set)
    or kaggle-sample. Returns the manifest, the rejected rows (file, line,
    image_id, reason; in file order) and a report of what was found, kept,
    set aside and left unused.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataEntryError(f"{root}: data root is not a directory")
    csv_path = find_metadata_csv(root, source)
    table, metadata, labels, rejected = read_usable_metadata(csv_path)
    rows_in_csv = len(table.frame) + len(table.rejected)
    scan = scan_image_folders(root, source)
    unlisted, unused = files_without_rows(scan, set(metadata["image_id"]), rejected)
    on_disk = metadata["image_id"].isin(scan.images.keys())
    missing = int((~on_disk).sum())
    if require_all_images and (missing or unlisted):
        raise DataEntryError(
            f"{root}: {missing} listed image(s) not on disk, {len(unlisted)} image(s) on disk "
            f"not in {csv_path.name} (ingest.require_all_images is true)"
        )
    kept = metadata[on_disk]
    if kept.empty:
        raise DataEntryError(f"{root}: none of the {len(metadata)} images in {csv_path.name} is on disk")
    manifest = pd.concat([kept, labels.loc[kept.index]], axis=1)
    manifest["path"] = [display_path(scan.images[i]) for i in manifest["image_id"]]
    manifest["split"] = assign_splits(manifest, split, seed, root)
    kept_lines = set(manifest["line"])
    ages_missing = [note for note in table.ages_missing if note["line"] in kept_lines]
    manifest = manifest[list(MANIFEST_COLUMNS)].reset_index(drop=True)
    report = {
        "metadata_csv": display_path(csv_path),
        "rows_in_csv": rows_in_csv,
        "rejected_rows": len(rejected),
        "rejected_rows_examples": [format_rejected_row(r) for r in rejected[:50]],
        "images_on_disk": len(scan.images),
        "rows_without_image": missing,
        "images_without_row": len(unlisted),
        "images_without_row_examples": unlisted[:10],
        "unused_files": unused_files_report(unused, display_path),
        "not_files": {"count": len(scan.not_files), "examples": [display_path(p) for p in scan.not_files[:50]]},
        "ages_missing": ages_missing,
        "manifest_rows": len(manifest),
        "patients": int(manifest["patient_id"].nunique()),
        "split_method": split_settings(split)[0],
        "split_images": {s: int(n) for s, n in manifest["split"].value_counts().sort_index().items()},
    }
    return manifest, rejected, report


def read_boxes(root: Path, image_ids: set[str]) -> pd.DataFrame:
    """NIH's BBox_List_2017.csv (if present) as image_id, finding, x, y, w, h,
    for the given images; coordinates are pixels of the original image."""
    path = Path(root) / BBOX_FILE_NAME
    rows = []
    if path.is_file():
        with csv_file(path) as reader:
            header = next(reader, [])
            if not ",".join(header).startswith("Image Index,Finding Label"):
                raise DataEntryError(f"{path}: line 1: not NIH's box list header: {','.join(header)[:80]}")
            for line, fields, unreadable in csv_rows(reader):
                if unreadable:
                    raise DataEntryError(f"{path}: line {line}: {unreadable}")
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


def ingest_notes(report: dict, rejected: int, rejected_file: Path, report_file: Path) -> list[str]:
    """One line for each kind of thing ingest set aside or left alone."""
    notes = []
    if rejected:
        notes.append(f"{rejected} CSV row(s) rejected, listed in {rejected_file}; the validate stage fails on them "
                     f"unless validate.on_invalid is drop")
    if report["ages_missing"]:
        notes.append(f"{len(report['ages_missing'])} age(s) missing or outside 0..120 kept as missing "
                     f"(validate names each)")
    unused = unused_files_line(report["unused_files"])
    if unused:
        notes.append(f"{unused}; the first 50 in {report_file}")
    if report["not_files"]["count"]:
        notes.append(f"{report['not_files']['count']} image name(s) that are not readable files (a dangling link?), "
                     f"e.g. {report['not_files']['examples'][0]}: preprocess quarantines them")
    return notes
