"""NIH ChestX-ray14's on-disk format: the metadata CSV and where images live.

The phantom is written in this same format, so one reader serves both.
"""
from __future__ import annotations

import csv
import gzip
import io
import re
from pathlib import Path

import pandas as pd

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
SOURCES = ("nih", "kaggle-sample")  # the data-root layouts read here (ingest.source)
BBOX_FILE_NAME = "BBox_List_2017.csv"
OFFICIAL_TEST_LIST = "test_list.txt"
OFFICIAL_TRAIN_VAL_LIST = "train_val_list.txt"
IMAGE_ID_PATTERN = re.compile(r"^\d{8}_\d{3}\.png$")
INT_FIELDS = ("follow_up", "patient_id", "orig_width", "orig_height")
# An age in whole years, or a DICOM age string: digits then D(ays), W(eeks), M(onths) or Y(ears).
AGE_PATTERN = r"^(\d+)([DWMY]?)$"
YEARS_PER_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


class DataEntryError(ValueError):
    """A metadata CSV that cannot be read; the message names file, row and problem."""


def check_source(source: str) -> None:
    """A data-root layout this module reads (phantom is NIH's layout)."""
    if source not in SOURCES:
        raise DataEntryError(f"ingest.source must be one of phantom, {', '.join(SOURCES)}; got {source!r}")


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


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


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


def read_data_entry(path: Path) -> pd.DataFrame:
    """Read Data_Entry_2017[_v2020].csv[.gz] into METADATA_FIELDS columns.

    Row numbers in errors are the CSV's line numbers (the header is line 1).
    """
    rows: list[list[str]] = []
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataEntryError(f"{path}: empty file, expected NIH's header")
        check_metadata_header(path, header)
        for line_number, fields in enumerate(reader, start=2):
            if fields and fields[-1] == "":  # the 2017 file's trailing comma
                fields = fields[:-1]
            if not fields:
                continue
            if len(fields) != len(METADATA_FIELDS):
                raise DataEntryError(
                    f"{path}: line {line_number}: expected {len(METADATA_FIELDS)} fields, "
                    f"got {len(fields)}: {','.join(fields)[:120]}"
                )
            rows.append(fields)
    frame = pd.DataFrame(rows, columns=list(METADATA_FIELDS))
    frame["line"] = range(2, 2 + len(frame))
    for field in INT_FIELDS:
        numbers = pd.to_numeric(frame[field].str.rstrip("Y"), errors="coerce")
        bad = numbers.isna() | (numbers != numbers.round())
        if bad.any():
            first = frame.index[bad][0]
            raise DataEntryError(
                f"{path}: line {frame.at[first, 'line']}: {field} is not an integer: "
                f"{frame.at[first, field]!r}"
            )
        frame[field] = numbers.astype("int64")
    frame["age"] = _ages_in_years(frame, path)
    return frame


def _ages_in_years(frame: pd.DataFrame, path: Path) -> pd.Series:
    """Whole years from "57" (NIH's CSVs) or "057Y" / "013M" / "001D" (Kaggle's
    sample): months, weeks and days round down, so a 13-month-old is 1."""
    parts = frame["age"].str.extract(AGE_PATTERN)
    bad = parts[0].isna()
    if bad.any():
        first = frame.index[bad][0]
        raise DataEntryError(
            f"{path}: line {frame.at[first, 'line']}: age is not an integer: {frame.at[first, 'age']!r} "
            f"(expected whole years like 57, or an age like 060Y, 013M, 001D)"
        )
    years = parts[0].astype("int64") * parts[1].map(YEARS_PER_UNIT)
    return (years + 1e-9).astype("int64")  # floor; the epsilon keeps 12M = 1 year exact


def image_folders(root: Path, source: str = "nih") -> list[Path]:
    """Where a layout keeps its PNGs: NIH's Box release in images/, Kaggle's full
    data set in images_001/images/ ... images_012/images/, Kaggle's sample in
    sample/images/ (or images/ when the zip was unpacked one level down)."""
    check_source(source)
    if source == "kaggle-sample":
        return [root / "sample" / "images", root / "images"]
    return [root / "images", *sorted(root.glob("images_*/images"))]


def index_images(root: Path, source: str = "nih") -> dict[str, Path]:
    """Map Image Index -> file for every PNG in the layout's folders, never
    leaving root (the first folder wins for a name found twice)."""
    root_resolved = root.resolve()
    found: dict[str, Path] = {}
    for folder in image_folders(root, source):
        if not folder.is_dir():
            continue
        for image in sorted(folder.iterdir()):
            if not IMAGE_ID_PATTERN.match(image.name):
                continue
            if not image.resolve().is_relative_to(root_resolved):
                raise DataEntryError(f"{image}: symlink points outside the data root {root}")
            found.setdefault(image.name, image)
    return found


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
