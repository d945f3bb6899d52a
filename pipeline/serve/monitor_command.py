"""`cxr monitor FILES_OR_FOLDER [--model URI] [--out DIR]`: do the films now
arriving still look like the ones the model was tested on? No labels needed.

Writes DIR/monitor.json and DIR/index.html (offline). Exit status, as diff's:
0 no drift, 1 drift, 2 the films, the model or its reference could not be
monitored (a usage error too), so that a cron job or CI can act on it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.serve.cli_options import (
    add_film_checks,
    add_model_options,
    alpha_value,
    load_for_command,
    positive_int,
    quiet_environment,
)

EXIT_NO_DRIFT, EXIT_DRIFT, EXIT_TROUBLE = 0, 1, 2
DEFAULT_OUT = Path("reports/monitor")


def add_monitor_command(commands) -> None:
    monitor = commands.add_parser(
        "monitor",
        help="label-free drift check: do new films still look like the model's test films?",
        description="Profile new films as the evaluate stage profiled the model's test films (file, grey values, "
                    "patient, outputs, embeddings), test every feature against that reference with one joint "
                    "permutation test, and write monitor.json and index.html. Exit 0 no drift, 1 drift, 2 trouble.",
    )
    monitor.add_argument("films", nargs="+", type=Path, metavar="FILES_OR_FOLDER",
                         help="PNG, JPEG or DICOM files, or folders searched for them")
    add_model_options(monitor)
    monitor.add_argument("--reference", type=Path, metavar="JSON",
                         help="a reference profile (reports/evaluate/reference_profile.json); default: the one "
                              "registered with the model's version")
    monitor.add_argument("--metadata", type=Path, metavar="CSV",
                         help="age, sex and view per film (NIH's Data_Entry_2017.csv or image_id,age,sex,view), "
                              "matched by file name; a DICOM's header gives its own; without either the patient "
                              "features are not tested")
    monitor.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                         help=f"where monitor.json and index.html go (default {DEFAULT_OUT})")
    monitor.add_argument("--permutations", type=positive_int, default=1000, metavar="N",
                         help="random re-splits of reference and new films behind every p (default 1000)")
    monitor.add_argument("--alpha", type=alpha_value, default=0.05,
                         help="family-wise error of the verdict: the chance of a false alarm (default 0.05)")
    monitor.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    add_film_checks(monitor)


def model_reference(model, path: Path | None) -> dict:
    """--reference's profile, else the one registered with the model's version, checked against its findings."""
    from pipeline.monitor.monitor import MonitorError
    from pipeline.monitor.reference import check_reference, read_reference

    if path is not None:
        return check_reference(read_reference(path), str(path), list(model.findings))
    if model.reference is None:
        raise MonitorError(f"{model.identity()} has no reference profile (registered before `cxr monitor`, or a "
                           ".keras file): give --reference reports/evaluate/reference_profile.json")
    return check_reference(model.reference, model.identity(), list(model.findings))


def patient_lookup(metadata: Path | None, films: list[Path]):
    """patient_of(i, header) for profile_films: --metadata's row (with its
    patient), else the DICOM header, else None."""
    from pipeline.serve.patient_csv import read_patient_metadata

    table = read_patient_metadata(metadata, with_patient=True) if metadata is not None else {}
    return lambda i, header: table.get(films[i].name, header)


def monitor_command(args: argparse.Namespace) -> int:
    quiet_environment()
    from pipeline.core.progress import Progress
    from pipeline.monitor.monitor import PAGE_FILE, MonitorError, film_files, monitor_films, write_monitor_report
    from pipeline.monitor.reference import ReferenceError
    from pipeline.serve.xray_model import ModelLoadError

    try:
        films = film_files(args.films)
        patient_of = patient_lookup(args.metadata, films)
        model = load_for_command(args)
        reference = model_reference(model, args.reference)
        print(f"model: {model.identity()}", file=sys.stderr, flush=True)
        report = monitor_films(model, reference, films, patient_of, args.permutations, args.alpha, args.seed,
                               args.batch_size, Progress(len(films), "monitor", lines=5))
        line = write_monitor_report(report, args.out)
    except (MonitorError, ReferenceError, ModelLoadError, ValueError, OSError) as exc:
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_TROUBLE
    for name, reason in report["films"]["not_profiled"].items():
        print(f"cxr: error: {name}: {reason}", file=sys.stderr)
    print(line)
    print(f"report: {args.out / PAGE_FILE}")
    return EXIT_DRIFT if report["verdict"] == "drift" else EXIT_NO_DRIFT
