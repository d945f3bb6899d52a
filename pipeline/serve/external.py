"""External validation: a hospital scores a trained model on its own labelled films, without training.

    cxr evaluate ROOT --labels labels.csv [--model models:/chestxray@champion] [--out reports/external]

The labels CSV is the folder source's (pipeline.data.folder): path (relative
to ROOT; PNG, JPEG or DICOM), labels as NIH writes them ("Effusion|Mass",
"No Finding"), patient_id, and optionally age, sex and view. Every row is a
test row. Rows the reader refuses are listed, films that cannot be read or
are refused by the film checks are quarantined with the reason, and the rest
are predicted exactly as `cxr predict` would (same preprocessing, same
checks). The figures are the evaluate stage's own (pipeline.core.metrics):
per-finding ROC AUC where the finding has positives and negatives, the mean
AUC with its bootstrap 95% CI, and sensitivity and specificity at the
model's stored thresholds. Written to <out>/external.json (and the
per-image probabilities to <out>/predictions.csv).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.atomic import write_csv_atomic, write_json_atomic
from pipeline.core.floors import MIN_PATIENTS, MIN_POSITIVES
from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import (
    auc_intervals,
    floored_aucs,
    mean_of_defined,
    operating_point_metrics,
    predictions_table,
)
from pipeline.core.patient import PatientMetadataError, encode_patient
from pipeline.data.folder import build_folder_manifest
from pipeline.data.row_problems import format_rejected_row
from pipeline.records.imaging import ImageError
from pipeline.serve.film_errors import error_reason
from pipeline.serve.predict import Film, XrayModel

REPORT_FILE = "external.json"
PREDICTIONS_FILE = "predictions.csv"
# Manifest fields that fill a model's patient input (a DICOM header's stand in for missing ones).
PATIENT_FIELDS = ("age", "sex", "view")
# The reader's map of the hospital's patient ids to their hashes stays out of a report meant to be shared.
PRIVATE_REPORT_KEYS = ("patient_ids",)


class ExternalSetError(RuntimeError):
    """A labels CSV or folder that gives nothing to score; the message says why."""


@dataclass
class ScoredFilms:
    """The films that were predicted, in manifest order, and those that could not be."""

    image_ids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)  # {"image_id", "path", "reason"}

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        width = len(FINDINGS)
        labels = np.array(self.labels, dtype=np.int64).reshape(-1, width)
        return labels, np.array(self.probabilities, dtype=np.float64).reshape(-1, width)


def external_manifest(root: Path, labels_csv: Path, seed: int) -> tuple[pd.DataFrame, list[dict], dict]:
    """The folder source's manifest with every row in split "test" (its paths relative to the
    working directory when inside it, else absolute), its rejected rows and its report."""
    return build_folder_manifest(root, labels_csv, split={}, seed=seed, all_test=True)


def given(value) -> bool:
    """Whether a manifest cell holds a value: the folder reader writes an unknown age as <NA>, sex and view as ""."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return False
    return str(value).strip() != ""


def row_patient(row: pd.Series, film: Film) -> dict:
    """The labels CSV's age, sex and view, each missing one taken from the film's DICOM header."""
    return patient_fields(row, film.patient)


def patient_fields(row: pd.Series, header: dict | None) -> dict:
    """row_patient from a DICOM header ({"age", "sex", "view"}, None for PNG/JPEG)."""
    header = header or {}
    patient = {key: row[key] if key in row and given(row[key]) else header.get(key) for key in PATIENT_FIELDS}
    missing = [key for key in ("sex", "view") if not given(patient[key])]
    if missing:
        raise PatientMetadataError(f"no {' or '.join(missing)} in the labels CSV or a DICOM header "
                                   "(the model was trained with patient metadata)")
    patient["age"] = patient["age"] if given(patient["age"]) else None  # imputed by pipeline.core.patient
    return patient


def read_row(model: XrayModel, row: pd.Series) -> tuple[np.ndarray, np.ndarray | None]:
    """One manifest row -> (pixels, encoded patient or None), raising ImageError or PatientMetadataError."""
    film = model.read(str(row["path"]))
    encoded = encode_patient(**row_patient(row, film)) if model.uses_patient_metadata else None
    return film.pixels, encoded


def score_films(model: XrayModel, manifest: pd.DataFrame, batch_size: int) -> ScoredFilms:
    """Predict every film of the manifest, a batch at a time; an unreadable or refused film is quarantined."""
    scored = ScoredFilms()
    for start in range(0, len(manifest), batch_size):
        batch = []
        for _, row in manifest.iloc[start : start + batch_size].iterrows():
            name = str(row["path"])
            try:
                batch.append((row, *read_row(model, row)))
            except (ImageError, PatientMetadataError) as exc:
                scored.quarantined.append({"image_id": str(row["image_id"]), "path": name,
                                           "reason": error_reason(exc, name)})
            except Exception as exc:  # noqa: BLE001 - one hostile file must not stop the whole evaluation
                scored.quarantined.append({"image_id": str(row["image_id"]), "path": name,
                                           "reason": f"cannot read: {type(exc).__name__}: {exc}"})
        if not batch:
            continue
        images = np.stack([pixels for _, pixels, _ in batch])
        encoded = np.stack([patient for _, _, patient in batch]) if model.uses_patient_metadata else None
        for (row, _, _), probabilities in zip(batch, model.predict(images, encoded, batch_size=batch_size)):
            scored.image_ids.append(str(row["image_id"]))
            scored.patient_ids.append(str(row["patient_id"]))
            scored.labels.append(row[list(FINDINGS)].to_numpy(dtype=np.int64))
            scored.probabilities.append(probabilities)
    return scored


def finding_entries(labels: np.ndarray, probabilities: np.ndarray, thresholds: dict, figures: dict) -> dict:
    """Per finding: counts, AUC (None with the reason below the floor) and its CI, and the operating point."""
    operating = operating_point_metrics(labels, probabilities, thresholds)
    entries = {}
    for i, finding in enumerate(FINDINGS):
        positives = int(labels[:, i].sum())
        low, high = figures["auc_ci_low"][finding], figures["auc_ci_high"][finding]
        entries[finding] = {
            "positives": positives,
            "negatives": len(labels) - positives,
            "auc": figures["auc"][finding],
            "auc_missing_reason": figures["auc_missing_reason"].get(finding),
            "auc_ci": [low, high] if low is not None else None,
            "threshold": thresholds[finding],
            **{name: operating[name][finding] for name in ("sensitivity", "specificity", "ppv", "npv")},
        }
    return entries


def external_metrics(
    labels: np.ndarray, probabilities: np.ndarray, thresholds: dict[str, float], resamples: int, seed: int,
    patient_ids=None, min_positives: int = MIN_POSITIVES, min_patients: int = MIN_PATIENTS,
) -> dict:
    """The scores of an external set, with the evaluate stage's functions and
    floors (pipeline.core.metrics); intervals by the patient bootstrap."""
    patients = list(range(len(labels))) if patient_ids is None else list(patient_ids)
    auc, reasons = floored_aucs(labels, probabilities, min_positives)
    intervals = auc_intervals(labels, probabilities, patients, resamples, seed, min_positives, min_patients)
    findings = finding_entries(labels, probabilities, thresholds, {**intervals, "auc": auc,
                                                                    "auc_missing_reason": reasons})
    return {
        "images": len(labels),
        "patients": len(set(patients)),
        "mean_auc": mean_of_defined(auc),
        "mean_auc_ci": intervals["mean_auc_ci"] if resamples > 0 else None,
        "ci_method": intervals["ci_method"],
        "findings_with_auc": sum(value is not None for value in auc.values()),
        "bootstrap_resamples": resamples,
        "min_positives": min_positives,
        "findings": findings,
    }


def evaluate_external(
    model: XrayModel, root: Path, labels_csv: Path, out_dir: Path, batch_size: int = 16,
    resamples: int = 1000, seed: int = 0, min_positives: int = MIN_POSITIVES,
) -> dict:
    """Score `model` on ROOT's labelled films, write <out_dir>/external.json and predictions.csv, return the report.
    ExternalSetError when no film could be scored."""
    manifest, rejected, reader_report = external_manifest(root, labels_csv, seed)
    scored = score_films(model, manifest, batch_size)
    if not scored.image_ids:
        raise ExternalSetError(f"{labels_csv}: no film could be scored ({len(rejected)} row(s) rejected, "
                               f"{len(scored.quarantined)} film(s) quarantined)")
    labels, probabilities = scored.arrays()
    report = {
        "model": {"uri": model.source, "version": model.version, "run_id": model.run_id,
                  "thresholds_source": model.thresholds_source},
        "root": str(root),
        "labels": str(labels_csv),
        "rows": len(manifest) + len(rejected),
        **external_metrics(labels, probabilities, model.thresholds, resamples, seed, scored.patient_ids,
                           min_positives),
        "rejected_rows": [plain(row) for row in rejected],
        "quarantined": scored.quarantined,
        "reader": plain({key: value for key, value in reader_report.items() if key not in PRIVATE_REPORT_KEYS}),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / REPORT_FILE, report)
    write_csv_atomic(predictions_table(scored.image_ids, labels, probabilities), out_dir / PREDICTIONS_FILE)
    return report


def plain(value):
    """JSON-ready: NumPy and pandas scalars as Python ones, NA as None, paths as strings."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if value is not None and not isinstance(value, (str, bool)) and pd.api.types.is_scalar(value) and pd.isna(value):
        return None
    return value


def figure(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(report: dict) -> str:
    """The report as a few lines for the terminal."""
    lines = [f"{'finding':<20}{'pos':>5}{'neg':>5}{'AUC':>7}{'sens':>7}{'spec':>7}"]
    for finding, entry in report["findings"].items():
        note = f"  AUC not given: {entry['auc_missing_reason']}" if entry["auc_missing_reason"] else ""
        lines.append(f"{finding:<20}{entry['positives']:>5}{entry['negatives']:>5}{figure(entry['auc']):>7}"
                     f"{figure(entry['sensitivity'], 2):>7}{figure(entry['specificity'], 2):>7}{note}")
    ci = report["mean_auc_ci"]
    interval = f" ({report['ci_method']}: {figure(ci[0])}-{figure(ci[1])})" if ci and ci[0] is not None else ""
    lines.append(f"mean AUC {figure(report['mean_auc'])}{interval} over {report['findings_with_auc']} finding(s) "
                 f"with at least {report['min_positives']} positive and negative films; {report['images']} film(s) "
                 f"of {report['patients']} patient(s) scored; sensitivity and specificity at the model's thresholds")
    return "\n".join(lines)


def print_problems(report: dict, limit: int = 20) -> None:
    """Rejected rows and quarantined films on stderr, one line each (the first `limit` of each)."""
    lines = ([f"rejected row: {format_rejected_row(row)}" for row in report["rejected_rows"]],
             [f"quarantined: {film['path']}: {film['reason']}" for film in report["quarantined"]])
    for kind in lines:
        for line in kind[:limit]:
            print(f"cxr: warning: {line}", file=sys.stderr)
        if len(kind) > limit:
            print(f"cxr: warning: ... and {len(kind) - limit} more, all in {REPORT_FILE}", file=sys.stderr)
