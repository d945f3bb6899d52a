"""The folder source (ingest.source: folder): a hospital's own labelled films.

ingest.root is the folder of images (any depth of subfolders) and
ingest.labels a CSV, relative to the root unless absolute, in this format
(UTF-8, comma-separated, header on line 1, column names in any order):

  path        required  the image file relative to ingest.root, '/' between
                        folders, no '..'; PNG, JPEG or DICOM (.png .jpg .jpeg
                        .dcm, any case)
  labels      required  findings separated by '|', NIH's 14 names as in
                        pipeline.core.labels ("No Finding" for none)
  patient_id  required  any non-empty text; the manifest's patient_id is
                        folder_patient_id(text), a stable 63-bit hash (the
                        ingest report maps each text to its number)
  age         optional  whole years (or a DICOM age, 057Y); empty, not a
                        number or outside 0..120: the film is kept, its age
                        missing, and validate warns
  sex         optional  M or F, any case; empty or no column: unknown ("")
  view        optional  PA or AP, any case; empty or no column: unknown ("")

The manifest's image_id is the CSV's path (validate checks it against
pipeline.data.sources.FOLDER_CONTRACT instead of NIH's pattern), follow_up is 0.
Rows are checked like NIH's: every problem row is set aside with its line
and reason in one run, and validate.on_invalid decides.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd

from pipeline.core.file_kind import file_kind, walk_real_folders
from pipeline.core.labels import FINDINGS, SEXES, VIEWS, format_finding_labels
from pipeline.data.csv_file import csv_file, csv_rows
from pipeline.data.manifest import MANIFEST_COLUMNS, display_path
from pipeline.data.nih import NOT_AN_IMAGE_NAME, SAME_INDEX_TWICE, DataEntryError
from pipeline.data.row_problems import (
    ages_with_notes,
    by_line,
    duplicate_reasons,
    format_rejected_row,
    parse_labels,
    rejected_row,
    unused_files_report,
)
from pipeline.data.split import assign_splits_by_method, split_settings

REQUIRED_COLUMNS = ("path", "labels", "patient_id")
OPTIONAL_COLUMNS = ("age", "sex", "view")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
NOT_IN_LABELS = "not in the labels CSV"
ROW_REJECTED = "its row in the labels CSV was rejected"
ALL_TEST = "all_test"  # split_method in the report when every row is test (external validation)


def folder_patient_id(text: str) -> int:
    """A stable int64 for a patient id written as text: the first 63 bits of
    its BLAKE2b hash (non-negative; two of a million patients collide with
    probability ~1e-7)."""
    digest = hashlib.blake2b(text.strip().encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def path_problem(text: str) -> str | None:
    """Why a labels-CSV path cannot name an image under the root, or None."""
    if not text:
        return "path is empty"
    if "\\" in text:
        return "path uses '\\': write '/' between folders"
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return "path is absolute: write it relative to ingest.root"
    parts = text.split("/")
    if ".." in parts:
        return "path leaves ingest.root ('..')"
    if "." in parts or "" in parts:
        return "path is not a plain relative path (an empty or '.' part)"
    if Path(text).suffix.lower() not in IMAGE_SUFFIXES:
        return f"path is not a PNG, JPEG or DICOM file name ({' '.join(IMAGE_SUFFIXES)})"
    return None


def file_key(relative: str) -> str:
    """A relative path with its extension lower-cased: x.PNG on disk matches x.png in the CSV."""
    stem, dot, suffix = relative.rpartition(".")
    return f"{stem}.{suffix.lower()}" if dot else relative


def read_labels_csv(path: Path, extra_columns: tuple[str, ...] = ()) -> tuple[pd.DataFrame, list[dict]]:
    """The labels CSV as strings (REQUIRED_COLUMNS, OPTIONAL_COLUMNS present, "line"),
    and its rows with the wrong number of fields. Raises only for a file
    without a usable header. `extra_columns`: the added columns it may have
    (evaluate.strata); any other column is an error, which catches a typo."""
    if not path.is_file():
        kind = file_kind(path.stat().st_mode) if path.exists() else None
        problem = f"is {kind}, not a CSV file" if kind else "labels CSV not found"
        raise DataEntryError(f"{path}: {problem} (ingest.labels, relative to ingest.root)")
    with csv_file(path) as reader:
        header = [h.strip().lower() for h in next(reader, [])]
        check_labels_header(path, header, tuple(c.lower() for c in extra_columns))
        rows, lines, rejected = [], [], []
        for line, fields, unreadable in csv_rows(reader):
            if unreadable:
                rejected.append(rejected_row(str(path), line, "", unreadable))
                continue
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                rejected.append(rejected_row(str(path), line, fields[0].strip(),
                                             f"unreadable row: expected {len(header)} fields, got {len(fields)}"))
                continue
            rows.append([f.strip() for f in fields])
            lines.append(line)
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame["line"] = pd.Series(lines, dtype="int64")
    return frame, rejected


def check_labels_header(path: Path, header: list[str], extra_columns: tuple[str, ...] = ()) -> None:
    if not header:
        raise DataEntryError(f"{path}: empty file, expected the header {','.join(REQUIRED_COLUMNS)}[,age,sex,view]")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS + extra_columns]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or repeated:
        problems = [f"missing column(s) {', '.join(missing)}" if missing else "",
                    f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                    f"repeated column(s) {', '.join(repeated)}" if repeated else ""]
        raise DataEntryError(
            f"{path}: line 1: {'; '.join(p for p in problems if p)} (columns: "
            f"{', '.join(REQUIRED_COLUMNS)}, optional {', '.join(OPTIONAL_COLUMNS)}, "
            "and any named in evaluate.strata)"
        )


def scan_folder(root: Path, skip: Path) -> tuple[dict[str, Path], list[dict]]:
    """{file_key(relative path): file} for every image under root, links
    followed (each real folder once, so a link loop ends), and the other
    files as unused {"file", "reason"}; `skip` is the labels CSV itself."""
    images: dict[str, Path] = {}
    unused: list[dict] = []
    for folder, names in walk_real_folders(root):
        for name in names:
            file = folder / name
            if file.absolute() == skip.absolute():
                continue
            relative = file.relative_to(root).as_posix()
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                unused.append({"file": file, "reason": NOT_AN_IMAGE_NAME})
            elif file_key(relative) in images:
                unused.append({"file": file, "reason": SAME_INDEX_TWICE})
            else:
                images[file_key(relative)] = file
    return images, unused


def _coded(values: pd.Series, allowed: tuple[str, ...], column: str) -> tuple[pd.Series, list[str | None]]:
    """Upper-cased values, "" for unknown, and a reason for anything else."""
    codes = values.fillna("").str.upper()
    reasons = [None if c == "" or c in allowed else f"{column} must be {' or '.join(allowed)} or empty, got {v!r}"
               for c, v in zip(codes, values)]
    return codes, reasons


def _row_reasons(frame: pd.DataFrame, images: dict[str, Path], root: Path) -> tuple[list[list[str]], list]:
    """Every problem of every row, and each row's multi-hot labels."""
    reasons: list[list[str]] = [[] for _ in range(len(frame))]

    def add(problems) -> None:
        for i, problem in enumerate(problems):
            if problem:
                reasons[i].append(problem)

    path_problems = [path_problem(p) for p in frame["path"]]
    add(path_problems)
    add(None if problem else (None if file_key(p) in images else f"no such image file under {root}")
        for p, problem in zip(frame["path"], path_problems))
    add(duplicate_reasons(frame["path"].map(file_key), frame["line"], "path"))
    multi_hot, label_problems = parse_labels(frame["labels"])
    add(label_problems)
    add("patient_id is empty" if not p else None for p in frame["patient_id"])
    for column, allowed in (("sex", SEXES), ("view", VIEWS)):
        if column in frame.columns:
            add(_coded(frame[column], allowed, column)[1])
    return reasons, multi_hot


def folder_split(manifest: pd.DataFrame, split: dict, seed: int, all_test: bool) -> tuple[pd.Series, str]:
    """(each row's split, the method's name): every row test for an external
    validation set, else ingest.split's hash or random method."""
    if all_test:
        return pd.Series("test", index=manifest.index), ALL_TEST
    method, ratios = split_settings(split)
    if method == "official":
        raise DataEntryError("ingest.split.method official needs NIH's test_list.txt; the folder source has none: "
                             "use hash or random")
    return assign_splits_by_method(method, manifest["patient_id"], ratios, seed, manifest[list(FINDINGS)]), method


def build_folder_manifest(
    root: Path, labels_csv: Path, split: dict, seed: int, all_test: bool = False,
    extra_columns: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, list[dict], dict]:
    """The manifest of a folder of films listed in a labels CSV (format in the
    module docstring), its rejected rows (file, line, image_id, reason) and a
    report. `all_test`: every row in split "test" (an external validation
    set scored by a trained model); else `split` (params.yaml's ingest.split,
    hash or random) splits patient-wise."""
    root, labels_csv = Path(root), Path(labels_csv)
    if not root.is_dir():
        raise DataEntryError(f"{root}: data root is not a directory")
    frame, unreadable = read_labels_csv(labels_csv, extra_columns)
    images, unused = scan_folder(root, labels_csv)
    reasons, multi_hot = _row_reasons(frame, images, root)
    file = str(labels_csv)
    rejected = by_line(unreadable + [rejected_row(file, line, path, "; ".join(r))
                                     for line, path, r in zip(frame["line"], frame["path"], reasons) if r])
    good = [not r for r in reasons]
    kept = frame[good].reset_index(drop=True)
    if kept.empty:
        example = f", e.g. {format_rejected_row(rejected[0])}" if rejected else ""
        raise DataEntryError(f"{labels_csv}: none of its {len(frame) + len(unreadable)} rows is usable{example}")
    used = {file_key(p) for p in kept["path"]}
    rejected_keys = {file_key(row["image_id"]) for row in rejected}
    unused += [{"file": images[key], "reason": ROW_REJECTED if key in rejected_keys else NOT_IN_LABELS}
               for key in sorted(images) if key not in used]
    manifest, ages_missing = _manifest_rows(kept, [h for h, g in zip(multi_hot, good) if g], images, file)
    manifest["split"], method = folder_split(manifest, split, seed, all_test)
    not_files = [p for p in manifest["path"] if not Path(p).is_file()]
    report = {
        "labels_csv": display_path(labels_csv),
        "rows_in_csv": len(frame) + len(unreadable),
        "rejected_rows": len(rejected),
        "rejected_rows_examples": [format_rejected_row(r) for r in rejected[:50]],
        "images_on_disk": len(images),
        "unused_files": unused_files_report(unused, display_path),
        "not_files": {"count": len(not_files), "examples": not_files[:50]},
        "ages_missing": ages_missing,
        "manifest_rows": len(manifest),
        "patients": int(manifest["patient_id"].nunique()),
        "patient_ids": dict(zip(kept["patient_id"], map(int, manifest["patient_id"]))),
        "split_method": method,
        "split_images": {s: int(n) for s, n in manifest["split"].value_counts().sort_index().items()},
    }
    return manifest[list(MANIFEST_COLUMNS)], rejected, report


def _manifest_rows(
    kept: pd.DataFrame, multi_hot: list, images: dict[str, Path], file: str
) -> tuple[pd.DataFrame, list[dict]]:
    """The manifest's columns but split for the usable rows, and their age notes."""
    manifest = pd.DataFrame({
        "image_id": kept["path"],
        "path": [display_path(images[file_key(p)]) for p in kept["path"]],
        "patient_id": pd.Series([folder_patient_id(p) for p in kept["patient_id"]], dtype="int64"),
        "follow_up": pd.Series(0, index=kept.index, dtype="int64"),
    })
    if "age" in kept.columns:
        manifest["age"], notes = ages_with_notes(kept["age"], kept["path"], kept["line"], file)
    else:
        manifest["age"], notes = pd.Series(pd.NA, index=kept.index, dtype="Int64"), []
    for column, allowed in (("sex", SEXES), ("view", VIEWS)):
        manifest[column] = _coded(kept[column], allowed, column)[0] if column in kept.columns else ""
    manifest["finding_labels"] = [format_finding_labels(h) for h in multi_hot]
    labels = pd.DataFrame(multi_hot, columns=list(FINDINGS), index=kept.index, dtype="int64")
    return pd.concat([manifest, labels], axis=1), notes
