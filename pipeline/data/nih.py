"""NIH ChestX-ray14's on-disk format: the metadata CSV and where images live.

The phantom is written in this same format, so one reader serves both.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.data.csv_file import DataEntryError, csv_file, csv_rows
from pipeline.data.row_problems import ages_with_notes, rejected_row

# NIH's header spans two CSV columns each for original size and pixel spacing,
# and the 2017 file ends every line with a trailing comma; the 2020 revision
# drops it. We name the fields ourselves and check the header's start.
METADATA_FIELDS = (
    "image_id",
    "finding_labels",
    "follow_up",
    "patient_id",
    "age",
    "sex",
    "view",
    "orig_width",
    "orig_height",
    "spacing_x",
    "spacing_y",
)
METADATA_FILE_NAMES = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)
# Kaggle's "Random Sample of NIH Chest X-ray Dataset" (5,606 images): one
# column each for width, height and spacing, no trailing comma, and ages
# written as DICOM age strings ("060Y"; a few "013M", "001D").
KAGGLE_SAMPLE_FILE_NAME = "sample_labels.csv"
KAGGLE_SAMPLE_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y"
)
LAYOUTS = ("nih", "kaggle-sample")  # the data-root layouts read here (their records: pipeline.data.sources)
BBOX_FILE_NAME = "BBox_List_2017.csv"
OFFICIAL_TEST_LIST = "test_list.txt"
OFFICIAL_TRAIN_VAL_LIST = "train_val_list.txt"
IMAGE_ID_PATTERN = re.compile(r"^\d{8}_\d{3}\.png$")
INT_FIELDS = ("follow_up", "patient_id", "orig_width", "orig_height")
# How the CSV's header names INT_FIELDS, for messages a user can find in the file.
CSV_NAMES = {"follow_up": "Follow-up #", "patient_id": "Patient ID", "orig_width": "OriginalImage Width",
             "orig_height": "OriginalImage Height"}


def check_source(source: str) -> None:
    """A data-root layout this module reads (phantom is NIH's layout)."""
    if source not in LAYOUTS:
        raise DataEntryError(f"not an NIH data-root layout: {source!r} (one of {', '.join(LAYOUTS)})")


def find_metadata_csv(root: Path, source: str = "nih") -> Path:
    """The metadata table under root: for nih, NIH's newest revision first; for
    kaggle-sample, Kaggle's sample_labels.csv. A root holding the other
    layout's table gets a hint to change ingest.source."""
    check_source(source)
    names = (KAGGLE_SAMPLE_FILE_NAME,) if source == "kaggle-sample" else METADATA_FILE_NAMES
    for name in names:
        candidate = root / name
        if candidate.is_file():
            return candidate
    hint = ""
    if source == "nih" and (root / KAGGLE_SAMPLE_FILE_NAME).is_file():
        hint = f"; it holds {KAGGLE_SAMPLE_FILE_NAME}: set ingest.source to kaggle-sample"
    elif source == "kaggle-sample" and any((root / n).is_file() for n in METADATA_FILE_NAMES):
        hint = "; it holds NIH's Data_Entry CSV: set ingest.source to nih"
    raise DataEntryError(f"{root}: no metadata CSV found (looked for {', '.join(names)}){hint}")


# The columns every NIH metadata table starts with, in this order (NIH's
# two-column [Width,Height] header and Kaggle's sample header share them).
REQUIRED_COLUMNS = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
)


def check_metadata_header(path: Path, header: list[str]) -> None:
    """Name the missing or misplaced required columns of a metadata header."""
    names = [h.strip() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataEntryError(
            f"{path}: line 1: missing required column(s) {', '.join(repr(c) for c in missing)} "
            f"(header: '{','.join(header)[:100]}')"
        )
    if tuple(names[: len(REQUIRED_COLUMNS)]) != REQUIRED_COLUMNS:
        raise DataEntryError(
            f"{path}: line 1: columns must start with {', '.join(REQUIRED_COLUMNS)} in that order "
            f"(header: '{','.join(header)[:100]}')"
        )


@dataclass
class MetadataTable:
    """A metadata CSV read row by row: the rows ingest can use, and what it set aside."""
    frame: pd.DataFrame  # METADATA_FIELDS + "line"; age is Int64, <NA> where the CSV's age is unusable
    rejected: list[dict] = field(default_factory=list)  # unreadable rows, as row_problems.rejected_row
    ages_missing: list[dict] = field(default_factory=list)  # one age note per <NA> age in frame


def read_metadata(path: Path) -> MetadataTable:
    """Read Data_Entry_2017[_v2020].csv[.gz] (or Kaggle's sample_labels.csv) into METADATA_FIELDS columns.

    Only a file without NIH's header raises: a row with the wrong number of
    fields or a Patient ID, Follow-up # or size that is not an integer is set
    aside as rejected, and an age that is missing, not a number or outside
    MIN_AGE..MAX_AGE (NIH's 2017 typos: 148..155, 411..414) becomes <NA> with
    a note, so one run names every problem. Line numbers are the file's (the
    header is line 1)."""
    file = str(path)
    rows: list[list[str]] = []
    lines: list[int] = []
    rejected: list[dict] = []
    with csv_file(path) as reader:
        header = next(reader, None)
        if header is None:
            raise DataEntryError(f"{path}: empty file, expected NIH's header")
        check_metadata_header(path, header)
        # Columns a user (or the phantom's shortcut: Drain) added after NIH's: read past, not rejected.
        named = header[:-1] if header and header[-1].strip() == "" else header
        extra = max(0, len(named) - len(METADATA_FIELDS))
        for line, fields, unreadable in csv_rows(reader):
            if unreadable:
                rejected.append(rejected_row(file, line, "", unreadable))
                continue
            if fields and fields[-1] == "":  # the 2017 file's trailing comma
                fields = fields[:-1]
            if not fields:
                continue
            if extra and len(fields) == len(METADATA_FIELDS) + extra:
                fields = fields[:len(METADATA_FIELDS)]
            if len(fields) != len(METADATA_FIELDS):
                rejected.append(rejected_row(file, line, fields[0],
                                             f"unreadable row: expected {len(METADATA_FIELDS)} fields, "
                                             f"got {len(fields)}: {','.join(fields)[:120]}"))
                continue
            rows.append(fields)
            lines.append(line)
    frame = pd.DataFrame(rows, columns=list(METADATA_FIELDS))
    frame["line"] = pd.Series(lines, dtype="int64")
    frame, unreadable = _integer_fields(frame, file)
    ages, notes = ages_with_notes(frame["age"], frame["image_id"], frame["line"], file)
    frame["age"] = ages
    return MetadataTable(frame, sorted(rejected + unreadable, key=lambda r: r["line"]), notes)


def _integer_fields(frame: pd.DataFrame, file: str) -> tuple[pd.DataFrame, list[dict]]:
    """INT_FIELDS as int64, without the rows where one of them is not a whole number."""
    reasons = pd.Series(None, index=frame.index, dtype=object)
    numbers = {}
    for name in INT_FIELDS:
        numbers[name] = pd.to_numeric(frame[name].str.rstrip("Y"), errors="coerce")
        bad = (numbers[name].isna() | (numbers[name] != numbers[name].round())) & reasons.isna()
        reasons[bad] = [f"unreadable row: {CSV_NAMES[name]} is not an integer: {v!r}" for v in frame.loc[bad, name]]
    unreadable = reasons.notna()
    rejected = [rejected_row(file, line, image_id, reason) for line, image_id, reason
                in zip(frame.loc[unreadable, "line"], frame.loc[unreadable, "image_id"], reasons[unreadable])]
    frame = frame[~unreadable].copy()
    for name in INT_FIELDS:
        frame[name] = numbers[name][~unreadable].astype("int64")
    return frame.reset_index(drop=True), rejected


def read_data_entry(path: Path) -> pd.DataFrame:
    """read_metadata for callers that need every row: the first unreadable row
    raises, naming file and line. Ages are Int64, <NA> where unusable."""
    table = read_metadata(path)
    if table.rejected:
        first = table.rejected[0]
        raise DataEntryError(f"{first['file']}: line {first['line']}: {first['reason']}")
    return table.frame

def image_folders(root: Path, source: str = "nih") -> list[Path]:
    """Where a layout keeps its PNGs: NIH's Box release in images/, Kaggle's full
    data set in images_001/images/ ... images_012/images/, Kaggle's sample in
    sample/images/ (or images/ when the zip was unpacked one level down)."""
    check_source(source)
    if source == "kaggle-sample":
        return [root / "sample" / "images", root / "images"]
    return [root / "images", *sorted(root.glob("images_*/images"))]


# Why a file in an image folder is not used (the ingest report lists them).
NOT_AN_IMAGE_NAME = "not an image file name"
SAME_INDEX_TWICE = "same Image Index found twice, first wins"
NOT_IN_CSV = "not in the metadata CSV"
ROW_REJECTED = "its row in the metadata CSV was rejected"


def image_key(name: str) -> str:
    """A file name as the Image Index it stands for: NIH writes .png, some copies .PNG."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.{suffix.lower()}" if dot else name


@dataclass
class ImageScan:
    """What a layout's image folders hold."""
    images: dict[str, Path]  # Image Index -> file; the first folder (then name) wins
    unused: list[dict]  # {"file": Path, "reason"} for every other file in the folders
    not_files: list[Path]  # indexed names that are not readable files: dangling links, folders


def scan_image_folders(root: Path, source: str = "nih") -> ImageScan:
    """Index every image in the layout's folders. Links are followed: a user's
    images_001/images may point at another disk; what protects the project is
    that an Image Index from the CSV must be a plain file name."""
    found: dict[str, Path] = {}
    unused: list[dict] = []
    not_files: list[Path] = []
    for folder in image_folders(root, source):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            key = image_key(entry.name)
            if not IMAGE_ID_PATTERN.match(key):
                if not entry.is_dir():  # a folder is not a file left out
                    unused.append({"file": entry, "reason": NOT_AN_IMAGE_NAME})
                continue
            if key in found:
                unused.append({"file": entry, "reason": SAME_INDEX_TWICE})
                continue
            found[key] = entry
            if not entry.is_file():
                not_files.append(entry)
    return ImageScan(found, unused, not_files)


def read_image_list(path: Path) -> list[str]:
    """NIH's test_list.txt / train_val_list.txt: one Image Index a line."""
    names = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            name = line.strip()
            if not name:
                continue
            if not IMAGE_ID_PATTERN.match(name):
                raise DataEntryError(
                    f"{path}: line {line_number}: {name[:80]!r} is not an Image Index like 00000001_000.png"
                )
            names.append(name)
    return names


def read_official_lists(root: Path) -> tuple[list[str], list[str]]:
    """The official split's (test, train_val) image lists from root."""
    lists = []
    for name in (OFFICIAL_TEST_LIST, OFFICIAL_TRAIN_VAL_LIST):
        path = root / name
        if not path.is_file():
            raise DataEntryError(
                f"{path}: not found; ingest.split.method official needs NIH's {OFFICIAL_TEST_LIST} "
                f"and {OFFICIAL_TRAIN_VAL_LIST} in the data root (they come with the NIH and Kaggle downloads)"
            )
        lists.append(read_image_list(path))
    return lists[0], lists[1]
