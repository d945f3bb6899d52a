"""`cxr artefact ROOT --labels CSV`: does a suspected artefact move the model?
Every film of a labelled folder is scored as it is and with the artefact drawn
on its original (pipeline.explain.artefact_check), and each finding's mean
change over the films without it is reported with a patient-clustered 95% CI
and a family-wise flag (a sign-flip permutation test over patients). A film
that cannot be read is listed with its reason and left out; the others are
checked."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pipeline.serve.cli_options import (
    add_film_checks,
    add_model_options,
    load_for_command,
    non_negative_int,
    quiet_environment,
)

EXIT_OK, EXIT_FAILED = 0, 1  # as cxr's other commands
DEFAULT_OUT = Path("reports/artefact")
REPORT_FILE = "artefact.json"


def add_artefact_command(commands) -> None:
    from pipeline.explain.artefact_check import ARTEFACTS, MIN_FILMS

    artefact = commands.add_parser(
        "artefact",
        help="counterfactual check: does drawing a suspected artefact (a chest drain) raise a finding?",
        description="Score each labelled film as it is and with the artefact drawn on it; per finding, the mean "
                    "change in its probability over the films without that finding, with a 95%% CI clustered by "
                    "patient, flagged raised or lowered at 5%% family-wise "
                    "(docs/evaluation.md#a-known-artefact).",
    )
    artefact.add_argument("root", type=Path, metavar="ROOT", help="the folder the labels CSV's paths are relative to")
    artefact.add_argument("--labels", type=Path, required=True, metavar="CSV",
                          help="path,labels,patient_id[,age,sex,view], as `cxr evaluate` reads it")
    artefact.add_argument("--artefact", choices=sorted(ARTEFACTS), default="drain",
                          help="what to draw (default drain)")
    artefact.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                          help=f"where {REPORT_FILE} goes (default {DEFAULT_OUT})")
    artefact.add_argument("--flips", type=non_negative_int, default=1000, metavar="N",
                          help="random sign flips of the patients behind every p (default 1000)")
    artefact.add_argument("--min-films", type=non_negative_int, default=MIN_FILMS, metavar="N",
                          help=f"a finding needs this many films without it, else no figure (default {MIN_FILMS})")
    artefact.add_argument("--seed", type=int, default=0, help="seed of the drawing and the sign flips (default 0)")
    add_model_options(artefact)
    add_film_checks(artefact)


def read_films(model, manifest) -> tuple[list[np.ndarray], list[int], list[np.ndarray], list[dict]]:
    """(8-bit originals, their manifest rows, encoded patients, quarantined films {"path", "reason"})."""
    from pipeline.core.patient import PatientMetadataError, encode_patient
    from pipeline.records.film import checked_film
    from pipeline.records.imaging import ImageError
    from pipeline.serve.external import patient_fields
    from pipeline.serve.film_errors import error_reason

    films, rows, patients, quarantined = [], [], [], []
    for position, (_, row) in enumerate(manifest.iterrows()):
        name = str(row["path"])
        try:
            gray, header = checked_film(Path(name).read_bytes(), name, model.checks)
            if model.uses_patient_metadata:
                patients.append(encode_patient(**patient_fields(row, header)))
        except (ImageError, PatientMetadataError, OSError) as exc:
            quarantined.append({"path": name, "reason": error_reason(exc, name)})
            continue
        films.append(gray)
        rows.append(position)
    return films, rows, patients, quarantined


def summary_table(report: dict) -> str:
    lines = [f"{'finding':20s} {'films':>6s} {'change':>8s}  95% CI             flag"]
    for finding, entry in report["by_finding"].items():
        if entry["mean_change"] is None:
            lines.append(f"{finding:20s} {entry['films']:6d} {'':>8s}  {entry['reason']}")
            continue
        low, high = entry["ci"]
        flag = "raised" if entry["raised"] else "lowered" if entry["lowered"] else ""
        lines.append(f"{finding:20s} {entry['films']:6d} {entry['mean_change']:+8.3f}  [{low:+.3f}, {high:+.3f}]"
                     f"   {flag}")
    if report["findings_tested"]:
        # Why an interval can exclude 0 with no flag beside it: the interval is per finding, the flag is not.
        lines.append(f"flag: 5% family-wise over the {report['findings_tested']} findings tested "
                     f"({report['flips']} sign flips of patients); each 95% CI is for its finding alone")
    return "\n".join(lines)


def artefact_command(args: argparse.Namespace) -> int:
    """0 when the films were checked (unreadable ones listed), 1 otherwise."""
    quiet_environment()
    from pipeline.core.atomic import write_json_atomic
    from pipeline.core.labels import FINDINGS
    from pipeline.data.nih import DataEntryError
    from pipeline.explain.artefact_check import artefact_effect, artefact_probabilities
    from pipeline.serve.external import external_manifest
    from pipeline.serve.predict import ModelLoadError

    for path, what in ((args.root, "image folder"), (args.labels, "labels CSV")):
        if not path.exists():
            print(f"cxr: error: {path}: no such {what}", file=sys.stderr)
            return EXIT_FAILED
    try:
        manifest, rejected, _ = external_manifest(args.root, args.labels, args.seed)
        model = load_for_command(args)
        print(f"model: {model.identity()}", file=sys.stderr, flush=True)
        films, rows, patients, quarantined = read_films(model, manifest)
        if not films:
            raise DataEntryError(f"{args.labels}: no film could be read, nothing to check")
        encoded = np.stack(patients) if patients else None
        without, drawn = artefact_probabilities(model, films, args.artefact, args.seed, args.batch_size, encoded)
        kept = manifest.iloc[rows]
        report = artefact_effect(without, drawn, kept[list(FINDINGS)].to_numpy(), kept["patient_id"].to_numpy(),
                                 list(FINDINGS), args.flips, args.seed, args.min_films)
    except (ModelLoadError, DataEntryError, ValueError, OSError) as exc:
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    report = {"artefact": args.artefact, "model": model.identity(), "films": len(films),
              "quarantined": quarantined, "rejected_rows": len(rejected), **report}
    write_json_atomic(args.out / REPORT_FILE, report)
    for film in quarantined:
        print(f"cxr: error: {film['path']}: {film['reason']}", file=sys.stderr)
    print(summary_table(report))
    print(f"report: {args.out / REPORT_FILE}")
    return EXIT_OK
