"""The manifest: one row per image, the table every stage after ingest reads.

Columns (in this order):
  image_id       NIH "Image Index", e.g. 00000001_000.png; with ingest.source folder,
                 the labels CSV's path, e.g. ward3/film_001.png
  path           the image file, relative to the project root when inside it
  patient_id     int
  follow_up      int, NIH "Follow-up #" (0 for the folder source)
  age            int, years, or <NA> (an empty CSV field) when the source's age is
                 missing, not a number or outside MIN_AGE..MAX_AGE
  sex            "M" | "F" ("" = unknown: the folder source only)
  view           "PA" | "AP" ("" = unknown: the folder source only)
  finding_labels NIH's "Finding Labels" string ("No Finding" or "A|B")
  <14 findings>  0/1, one column per name in pipeline.core.labels.FINDINGS
  split          "train" | "val" | "test"
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.core.labels import FINDINGS

# What an image_id looks like is each source's manifest contract (pipeline.data.sources).

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    "path",
    "patient_id",
    "follow_up",
    "age",
    "sex",
    "view",
    "finding_labels",
    *FINDINGS,
    "split",
)
MANIFEST_DTYPES = {
    "image_id": "string",
    "path": "string",
    "patient_id": "int64",
    "follow_up": "int64",
    "age": "Int64",  # nullable: <NA> is a missing age
    "sex": "string",
    "view": "string",
    "finding_labels": "string",
    **{f: "int64" for f in FINDINGS},
    "split": "string",
}


def read_manifest(path: Path | str) -> pd.DataFrame:
    """Read a manifest CSV written by write_manifest."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    for column, dtype in MANIFEST_DTYPES.items():
        if dtype == "int64":
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("int64")
        elif dtype == "Int64":
            frame[column] = pd.to_numeric(frame[column].replace("", None), errors="raise").astype("Int64")
    return frame[list(MANIFEST_COLUMNS)]


def display_path(path: Path) -> str:
    """Relative to the project root when inside it, so the manifest (and its
    DVC hash) does not depend on where the project is cloned. Not resolved:
    a user's link (images_001/images -> another disk) stays as they made it."""
    absolute = path.absolute()
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return absolute.as_posix()
