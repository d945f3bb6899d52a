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
METADATA_HEADER_START = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age"
METADATA_FILE_NAMES = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)
BBOX_FILE_NAME = "BBox_List_2017.csv"
IMAGE_ID_PATTERN = re.compile(r"^\d{8}_\d{3}\.png$")
INT_FIELDS = ("follow_up", "patient_id", "age", "orig_width", "orig_height")


class MetadataError(ValueError):
    """A metadata CSV that cannot be read; the message names file, row and problem."""


def find_metadata_csv(root: Path) -> Path:
    """The NIH metadata table under root (newest revision first)."""
    for name in METADATA_FILE_NAMES:
        candidate = root / name
        if candidate.is_file():
            return candidate
    raise MetadataError(f"{root}: no metadata CSV found (looked for {', '.join(METADATA_FILE_NAMES)})")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_nih_metadata(path: Path) -> pd.DataFrame:
    """Read Data_Entry_2017[_v2020].csv[.gz] into METADATA_FIELDS columns.

    Row numbers in errors are the CSV's line numbers (the header is line 1).
    """
    rows: list[list[str]] = []
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise MetadataError(f"{path}: empty file, expected NIH's header")
        if not ",".join(header).startswith(METADATA_HEADER_START):
            raise MetadataError(
                f"{path}: line 1: header does not start with '{METADATA_HEADER_START}' "
                f"(got '{','.join(header)[:80]}')"
            )
        for line_number, fields in enumerate(reader, start=2):
            if fields and fields[-1] == "":  # the 2017 file's trailing comma
                fields = fields[:-1]
            if not fields:
                continue
            if len(fields) != len(METADATA_FIELDS):
                raise MetadataError(
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
            raise MetadataError(
                f"{path}: line {frame.at[first, 'line']}: {field} is not an integer: "
                f"{frame.at[first, field]!r}"
            )
        frame[field] = numbers.astype("int64")
    return frame


def index_images(root: Path) -> dict[str, Path]:
    """Map Image Index -> file for every PNG in NIH's Box layout (images/) or
    Kaggle's (images_001/images/ ... images_012/images/), never leaving root."""
    root_resolved = root.resolve()
    found: dict[str, Path] = {}
    folders = [root / "images", *sorted(root.glob("images_*/images"))]
    for folder in folders:
        if not folder.is_dir():
            continue
        for image in sorted(folder.iterdir()):
            if not IMAGE_ID_PATTERN.match(image.name):
                continue
            if not image.resolve().is_relative_to(root_resolved):
                raise MetadataError(f"{image}: symlink points outside the data root {root}")
            found.setdefault(image.name, image)
    return found
