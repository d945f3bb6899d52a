"""Row problems of a metadata or labels CSV, collected instead of stopping at the first.

Ingest reads every row of the user's CSV and sets aside each one it cannot
use (a rejected row: file, line, image_id, reason), so that one run names all
of them; the validate stage decides whether they fail the run
(validate.on_invalid). A bad age is not a reason to lose an image: the row is
kept with its age missing and an age note (file, line, image_id, value,
reason) says what the CSV held.

All of it is plain dicts and lists, so the notes travel through CSV and JSON.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from pipeline.core.labels import MAX_AGE, MIN_AGE, LabelError, parse_finding_labels

REJECTED_ROW_FIELDS = ("file", "line", "image_id", "reason")
AGE_NOTE_FIELDS = ("file", "line", "image_id", "value", "reason")
SHOWN_ON_SCREEN = 50  # rejected rows, unused files and age warnings printed before "... and K more"
# An age in whole years, or a DICOM age string: digits then D(ays), W(eeks), M(onths) or Y(ears).
AGE_PATTERN = r"^(\d+)([DWMY]?)$"
YEARS_PER_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def rejected_row(file: str, line: int, image_id: str, reason: str) -> dict:
    return {"file": str(file), "line": int(line), "image_id": str(image_id), "reason": reason}


def by_line(rows: Iterable[dict]) -> list[dict]:
    """Rows in file order, so a user fixes the CSV top to bottom."""
    return sorted(rows, key=lambda row: (row["file"], row["line"]))


def format_rejected_row(row: dict) -> str:
    return f"{row['file']}: line {row['line']}: {row['image_id']}: {row['reason']}"


def format_rejected_rows(rows: Sequence[dict], full_list: str, limit: int = SHOWN_ON_SCREEN) -> list[str]:
    """The first `limit` rows as `file: line N: <Image Index>: reason`, then where the rest are."""
    lines = [format_rejected_row(row) for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more, all in {full_list}")
    return lines


def write_rejected_rows(rows: Sequence[dict], path: Path | str) -> None:
    """The rejected rows as CSV (a header only when there are none)."""
    from pipeline.core.atomic import write_csv_atomic

    write_csv_atomic(pd.DataFrame(list(rows), columns=list(REJECTED_ROW_FIELDS)), path)


def read_rejected_rows(path: Path | str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != REJECTED_ROW_FIELDS:
            raise ValueError(f"{path}: line 1: expected the header {','.join(REJECTED_ROW_FIELDS)}, "
                             f"got {','.join(reader.fieldnames or [])!r}")
        return [rejected_row(r["file"], int(r["line"]), r["image_id"], r["reason"]) for r in reader]


# --------------------------------------------------------------------------
# Ages


def age_in_years(text: str) -> tuple[int | None, str | None]:
    """(whole years, None), or (None, why the age is kept as missing).

    "57" (NIH's CSVs) or "057Y" / "013M" / "001D" (Kaggle's sample): months,
    weeks and days round down, so a 13-month-old is 1."""
    value = str(text).strip()
    if not value:
        return None, "age missing"
    match = re.match(AGE_PATTERN, value)
    if match is None:
        return None, f"age {value!r} is not a number of years"
    years = int(int(match.group(1)) * YEARS_PER_UNIT[match.group(2)] + 1e-9)  # floor; 12M is exactly 1 year
    if not MIN_AGE <= years <= MAX_AGE:
        return None, f"age {value} outside {MIN_AGE}..{MAX_AGE}"
    return years, None


def ages_with_notes(values: pd.Series, image_ids: pd.Series, lines: pd.Series, file: str) -> tuple[pd.Series, list]:
    """Ages as a nullable integer column (<NA> where unusable) and one age note per <NA>."""
    codes, uniques = pd.factorize(values.astype(str))
    parsed = [age_in_years(u) for u in uniques]  # NIH's 112,120 rows hold ~100 distinct ages
    years = pd.array([parsed[c][0] for c in codes], dtype="Int64")
    notes = [
        {"file": file, "line": int(line), "image_id": str(image_id), "value": str(value), "reason": parsed[c][1]}
        for c, value, image_id, line in zip(codes, values, image_ids, lines)
        if parsed[c][1] is not None
    ]
    return pd.Series(years, index=values.index, name="age"), notes


def age_warning(note: dict) -> str:
    """`age 414 outside 0..120 kept as missing: 00001234_000.png (Data_Entry_2017.csv line 1235)`."""
    return f"{note['reason']} kept as missing: {note['image_id']} ({Path(note['file']).name} line {note['line']})"


# --------------------------------------------------------------------------
# Checks shared by the NIH and folder sources


def duplicate_reasons(keys: pd.Series, lines: pd.Series, what: str) -> pd.Series:
    """For the second and later rows of a key: `duplicate <what> (first on line N)`; None elsewhere."""
    first_line = lines.groupby(keys).transform("min")
    repeated = keys.duplicated(keep="first")
    return pd.Series(
        [f"duplicate {what} (first on line {first})" if dup else None for dup, first in zip(repeated, first_line)],
        index=keys.index, dtype=object,
    )


def parse_labels(values: pd.Series) -> tuple[list[tuple[int, ...] | None], list[str | None]]:
    """Each "Finding Labels" value as its multi-hot tuple, or None and the reason."""
    codes, uniques = pd.factorize(values.astype(str))
    results = []
    for text in uniques:
        try:
            results.append((tuple(parse_finding_labels(text)), None))
        except LabelError as exc:
            results.append((None, str(exc)))
    return [results[c][0] for c in codes], [results[c][1] for c in codes]


def unused_files_report(unused: Sequence[dict], show_path) -> dict:
    """The ingest report's entry for files in the image folders that no row uses:
    how many, how many for each reason, and the first SHOWN_ON_SCREEN of them."""
    reasons: dict[str, int] = {}
    for item in unused:
        reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
    return {
        "count": len(unused),
        "by_reason": reasons,
        "first": [{"file": show_path(item["file"]), "reason": item["reason"]} for item in unused[:SHOWN_ON_SCREEN]],
    }


def unused_files_line(report: dict) -> str | None:
    """One line for stderr: `N file(s) in the image folders not used (not in the metadata CSV: 2, ...)`."""
    if not report["count"]:
        return None
    reasons = ", ".join(f"{reason}: {n}" for reason, n in report["by_reason"].items())
    return f"{report['count']} file(s) in the image folders not used ({reasons})"
