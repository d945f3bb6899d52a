"""The manifest: one row per image, the table every stage after ingest reads.

Columns (in this order):
  image_id       NIH "Image Index", e.g. 00000001_000.png
  path           the image file, relative to the project root when inside it
  patient_id     int
  follow_up      int, NIH "Follow-up #"
  age            int, years
  sex            "M" | "F"
  view           "PA" | "AP"
  finding_labels NIH's "Finding Labels" string ("No Finding" or "A|B")
  <14 findings>  0/1, one column per name in pipeline.core.labels.FINDINGS
  split          "train" | "val" | "test"
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.core.labels import FINDINGS

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
    "age": "int64",
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
    return frame[list(MANIFEST_COLUMNS)]
