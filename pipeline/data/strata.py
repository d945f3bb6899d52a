"""Strata from any column (evaluate.strata): the extra columns of a source's
metadata table (NIH's Data_Entry CSV, Kaggle's sample_labels.csv, or the
folder source's labels CSV) that a team wants the test figures split by,
e.g. a Drain or Site column nobody trained on.

Read by image id from the same file ingest read, as text: a stratum is a
value, an empty field is "no value" (the film is in no stratum of that
column and counted as such). A column the file lacks is one line naming the
param, the file and the columns it has.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.core.config import ConfigError
from pipeline.data.csv_file import csv_file, csv_rows

# NIH's and the folder source's own columns: already sliced by (sex, age,
# view) or not a stratum at all (labels, ids); naming one is a mistake.
OWN_COLUMNS = {
    "nih": ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
            "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"),
    "folder": ("path", "labels", "patient_id", "age", "sex", "view"),
}
ID_COLUMN = {"nih": "Image Index", "folder": "path"}


def metadata_table_path(source: str, root: Path, labels: str | None) -> tuple[Path, str]:
    """(the metadata table ingest reads for `source`, its layout: "nih" or "folder")."""
    if source == "folder":
        path = Path(labels or "")
        return (path if path.is_absolute() else Path(root) / path), "folder"
    from pipeline.data.nih import find_metadata_csv

    return find_metadata_csv(Path(root), "kaggle-sample" if source == "kaggle-sample" else "nih"), "nih"


def read_strata(source: str, root: Path, labels: str | None, columns: Sequence[str]) -> pd.DataFrame:
    """{image id: the named columns' values as text ("" = no value)}, one row per
    image of the source's metadata table. Empty `columns`: an empty frame."""
    if not columns:
        return pd.DataFrame(columns=[])
    path, layout = metadata_table_path(source, root, labels)
    id_column = ID_COLUMN[layout]
    own = [c for c in columns if c in OWN_COLUMNS[layout]]
    if own:
        raise ConfigError(f"evaluate.strata: {', '.join(own)} {'is' if len(own) == 1 else 'are'} {path.name}'s own "
                          "column(s), already reported (sex, age, view) or not a stratum; name added columns")
    with csv_file(path) as reader:
        header = [h.strip() for h in next(reader, [])]
        if layout == "folder":
            header = [h.lower() for h in header]
        wanted = [c.lower() if layout == "folder" else c for c in columns]
        missing = [c for c, w in zip(columns, wanted) if w not in header]
        if missing:
            extra = [h for h in header if h and h not in OWN_COLUMNS[layout]]
            raise ConfigError(f"evaluate.strata: {path} has no column {', '.join(missing)} "
                              f"(its added columns: {', '.join(extra) or 'none'})")
        at = [header.index(w) for w in wanted]
        key = header.index(id_column)
        rows = {}
        for _, fields, unreadable in csv_rows(reader):
            if unreadable or len(fields) <= max(at + [key]):
                continue  # ingest rejected this row already: it has no film in the test split
            rows[fields[key].strip()] = [fields[i].strip() for i in at]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(columns), dtype=object)


def strata_of_films(table: pd.DataFrame, image_ids: Sequence[str]) -> dict[str, list[str]]:
    """{column: each test film's value ("" when the table has none for it)}."""
    found = table.reindex(list(image_ids))
    return {column: ["" if pd.isna(v) else str(v) for v in found[column]] for column in table.columns}
