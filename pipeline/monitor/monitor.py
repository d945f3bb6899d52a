"""`cxr monitor`'s work: new films profiled as the reference was, tested against
it (pipeline.monitor.drift), and the record monitor.json holds."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from pipeline.monitor.profile import PatientOf, ServedModel, profile_films
from pipeline.monitor.reference import compare, probability_shift

REPORT_FILE = "monitor.json"
PAGE_FILE = "index.html"
# Fewer new films than this give no verdict: a test on a handful of films
# would read "no drift" only because it cannot see any.
MIN_NEW_FILMS = 20
# A reference of fewer test films gives no verdict either; one under
# SMALL_REFERENCE gives one with a warning: the test stays exact (false alarms
# at most alpha) but sees only a large drift.
MIN_REFERENCE_FILMS = 10
SMALL_REFERENCE = 50
FILM_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
MOVED_MOST = 5  # features named in the verdict line


class MonitorError(ValueError):
    """Films or a reference that cannot be monitored; the message says why."""


def film_files(inputs: Sequence[Path]) -> list[Path]:
    """The files given, and every film file (by suffix) under the folders given, sorted."""
    films: list[Path] = []
    for item in inputs:
        if item.is_dir():
            films += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in FILM_SUFFIXES)
        elif item.exists():
            films.append(item)
        else:
            raise MonitorError(f"{item}: no such file or folder")
    if not films:
        raise MonitorError(f"no PNG, JPEG or DICOM files in {', '.join(map(str, inputs))}")
    return films


def monitor_films(model: ServedModel, reference: dict, films: Sequence[Path], patient_of: PatientOf,
                  permutations: int, alpha: float, seed: int, batch_size: int = 16, progress=None) -> dict:
    """The whole record of one monitoring: films profiled, every feature's test,
    the verdict, the drift score and the shift of each finding's mean probability."""
    if reference["films"] < MIN_REFERENCE_FILMS:
        raise MonitorError(f"the reference profile holds {reference['films']} test films; a verdict needs at least "
                           f"{MIN_REFERENCE_FILMS} (a bigger test split: ingest.split.test)")
    profiles = profile_films(model, films, patient_of, batch_size, progress)
    if len(profiles.names) < MIN_NEW_FILMS:
        example = next(iter(profiles.failed.items()), None)
        raise MonitorError(f"{len(profiles.names)} of {len(films)} films could be profiled; a verdict needs at "
                           f"least {MIN_NEW_FILMS}" + (f" (e.g. {example[0]}: {example[1]})" if example else ""))
    findings = list(model.findings)
    result = compare(reference, profiles, findings, permutations, alpha, seed)
    features = sorted((asdict(f) for f in result.features),
                      key=lambda f: (f["z"] is None, -(f["z"] or 0.0)))
    moved = [f["name"] for f in features if f["flagged"]][:MOVED_MOST]
    return {
        "verdict": result.verdict, "drift_score": round(result.score, 3), "drift_score_p": result.score_p,
        "alpha": alpha, "permutations": permutations, "seed": seed, "critical_z": round(result.critical_z, 3),
        "moved_most": moved,
        "model": {"uri": getattr(model, "source", ""), "version": getattr(model, "version", None),
                  "run_id": getattr(model, "run_id", None)},
        "reference": {key: reference.get(key) for key in ("split", "films", "films_in_split", "sampled",
                                                          "data_source")},
        "films": {"given": len(films), "profiled": len(profiles.names), "not_profiled": profiles.failed},
        "features": features,
        "probability_shift": probability_shift(reference, profiles, findings),
    }


def verdict_line(report: dict) -> str:
    """One line for a person or a log: the verdict, the score and what moved."""
    films = report["films"]
    line = (f"{report['verdict']}: drift score {report['drift_score']:.2f} (permutation p "
            f"{report['drift_score_p']:.2g}) over {films['profiled']} films against {report['reference']['films']} "
            f"reference films")
    if report["moved_most"]:
        line += f"; moved most: {', '.join(report['moved_most'])}"
    if report["reference"]["films"] < SMALL_REFERENCE:
        line += (f" (a reference of {report['reference']['films']} films sees only a large drift: fewer than "
                 f"{SMALL_REFERENCE})")
    return line


def write_monitor_report(report: dict, out_dir: Path) -> str:
    """monitor.json and its page into out_dir (each written whole); returns the verdict line."""
    from pipeline.core.atomic import write_json_atomic, write_text_atomic
    from pipeline.monitor.page import monitor_page

    out_dir.mkdir(parents=True, exist_ok=True)
    line = verdict_line(report)
    write_json_atomic(out_dir / REPORT_FILE, report)
    write_text_atomic(out_dir / PAGE_FILE, monitor_page(report, line))
    return line
