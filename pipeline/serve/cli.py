"""cxr: chest X-ray findings from the command line.

    cxr predict IMAGE... [--model URI] [--gradcam DIR] [--json] [--tracking-uri URI] [--timeout SECONDS]
                [--min-side PX] [--max-aspect RATIO] [--allow-lateral]
                [--age YEARS --sex M|F --view PA|AP | --metadata CSV]
    cxr evaluate ROOT --labels CSV [--model URI] [--out DIR]   (pipeline.serve.external)
    cxr serve [--model URI] [--port 5001] [--host 127.0.0.1]    (pipeline.serve.server)
    cxr monitor FILES_OR_FOLDER [--model URI] [--out DIR]       (pipeline.serve.monitor_command)
    cxr artefact ROOT --labels CSV [--artefact drain] [--model URI] (pipeline.serve.artefact_command)

IMAGE is a PNG, JPEG or DICOM file. A film is refused, with the reason,
before it is decoded when its shorter side is below --min-side, its aspect
ratio beyond --max-aspect, or its DICOM ViewPosition lateral (unless
--allow-lateral).

A model trained with patient metadata (train.use_metadata) needs each
image's age, sex and view: the same for every image with --age/--sex/--view,
or per image from --metadata (NIH's Data_Entry_2017.csv, or any CSV with
image_id, age, sex and view), matched by file name; else, for a DICOM, its
PatientAge, PatientSex and ViewPosition.

Results go to stdout (a line naming the model, then one line per image, or
one JSON list with --json); problems go to stderr as
`cxr: error: <file>: <reason>`. A bad image does not stop the others. A
tracking store that is missing, damaged or does not answer is one line,
`cxr: error: MLflow store <store>...`, in seconds, and is never written.
Exit status: 0 all images predicted, 1 an image, the model or its store
failed, 2 a usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.core.floors import MIN_POSITIVES
from pipeline.core.labels import SEXES, VIEWS
from pipeline.core.patient import PatientMetadataError, encode_patient
from pipeline.core.tracking import DEFAULT_TRACKING_URI
from pipeline.serve.artefact_command import add_artefact_command, artefact_command
from pipeline.serve.cli_options import (
    DEFAULT_MODEL,
    add_film_checks,
    add_model_options,
    load_for_command,
    non_negative_int,
    positive_int,
    positive_seconds,
    quiet_environment,
)
from pipeline.serve.film_scores import FilmScore, score_films
from pipeline.serve.films import header_patient
from pipeline.serve.monitor_command import add_monitor_command, monitor_command

if TYPE_CHECKING:  # the real import loads TensorFlow, so it waits until after argument parsing
    from pipeline.serve.predict import Film, XrayModel

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# The film-shape limits are the preprocess stage's params, which imaging's messages
# name; on the command line the same limits are these options.
CLI_PATIENT_REMEDY = "give --age, --sex and --view, or --metadata CSV"
NO_PATIENT_METADATA = f"no age, sex or view for a PNG/JPEG (a DICOM carries them in its header): {CLI_PATIENT_REMEDY}"


@dataclass
class ImageResult(FilmScore):
    """One input image's outcome (FilmScore), its overlays, and how the command prints it."""

    overlay_stem: str = ""
    gradcam: dict[str, str] = field(default_factory=dict)

    @property
    def image(self) -> str:
        return self.name

    def fail(self, reason: str) -> None:
        super().fail(reason)
        print(f"cxr: error: {self.image}: {reason}", file=sys.stderr, flush=True)

    def as_json(self, with_gradcam: bool, model: dict) -> dict:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        out = {"image": self.image, "probabilities": self.probabilities, "findings": self.findings, **model}
        if with_gradcam:
            out["gradcam"] = self.gradcam
        return out

    def top_finding(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    def findings_to_explain(self) -> list[str]:
        """Each positive finding, or the most probable one when none is positive."""
        return self.findings or [self.top_finding()]

    def as_text(self) -> str:
        if self.findings:
            line = ", ".join(f"{f} {self.probabilities[f]:.3f}" for f in self.findings)
        else:
            top = self.top_finding()
            line = f"no finding at its threshold (highest: {top} {self.probabilities[top]:.3f})"
        if self.gradcam:
            line += f"; Grad-CAM: {', '.join(self.gradcam.values())}"
        return f"{self.image}: {line}"


def model_fields(model: XrayModel) -> dict:
    """What each JSON entry says about the model that answered."""
    return {"model": model.source, "model_version": model.version, "model_run_id": model.run_id}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr", description="Chest X-ray findings (NIH ChestX-ray14's 14 labels)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict",
        help="predict the 14 findings for PNG/JPEG/DICOM X-rays",
        description="Predict the 14 findings for PNG/JPEG/DICOM X-rays, preprocessed exactly as in training.",
    )
    predict.add_argument(
        "images", nargs="+", metavar="IMAGE", help="PNG, JPEG (8/16-bit, gray/RGB/RGBA) or DICOM files"
    )
    add_model_options(predict)
    predict.add_argument(
        "--gradcam", type=Path, metavar="DIR",
        help="write a Grad-CAM overlay PNG into DIR for each positive finding (or the top one if none), "
             "labelled with the finding and its probability",
    )
    predict.add_argument("--json", action="store_true", help="print one JSON list, an object per image")
    add_film_checks(predict)
    add_patient_options(predict)
    add_evaluate_command(commands)
    add_serve_command(commands)
    add_monitor_command(commands)
    add_artefact_command(commands)
    return parser


def add_serve_command(commands) -> None:
    from pipeline.serve.server import DEFAULT_HOST, DEFAULT_PORT

    serve = commands.add_parser(
        "serve",
        help="serve a registered version with MLflow's model server (raw films in, one answer per film)",
        description="Resolve --model to its version and run `mlflow models serve` for it in this environment. "
                    "POST films to /invocations as base64 in dataframe_split JSON (docs/predict.md#model-server).",
    )
    serve.add_argument("--model", default=DEFAULT_MODEL, metavar="URI",
                       help=f"models:/name@alias, models:/name/version or runs:/run_id/model (default {DEFAULT_MODEL})")
    serve.add_argument("--tracking-uri", metavar="URI",
                       help=f"MLflow tracking store (default $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})")
    serve.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                       help="the most one call to a tracking server may wait while the model is resolved")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    serve.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    serve.add_argument("--workers", type=positive_int, default=1,
                       help="server processes, each with its own copy of the model (default 1)")


def serve_command(args: argparse.Namespace) -> int:
    """`cxr serve`: 1 when the model or its store cannot be resolved; else it becomes the server."""
    from pipeline.core.tracking import tracking_uri
    from pipeline.serve.predict import ModelLoadError
    from pipeline.serve.server import serve

    try:
        serve(args.model, args.tracking_uri or tracking_uri(), args.host, args.port, args.workers, args.timeout)
    except ModelLoadError as exc:
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def add_patient_options(predict: argparse.ArgumentParser) -> None:
    patient = predict.add_argument_group(
        "patient metadata",
        "needed by a model trained with train.use_metadata (a DICOM's own PatientAge, PatientSex and ViewPosition "
        "are used when none is given); ignored (with a note) otherwise",
    )
    patient.add_argument("--age", type=float, metavar="YEARS", help="patient age, for every image")
    patient.add_argument("--sex", choices=SEXES, type=str.upper, help="patient sex, for every image")
    patient.add_argument("--view", choices=VIEWS, type=str.upper, help="view position, for every image")
    patient.add_argument(
        "--metadata", type=Path, metavar="CSV",
        help="per-image age, sex and view: NIH's Data_Entry_2017.csv or a CSV with columns image_id, age, sex, "
             "view (e.g. data/ingest/manifest.csv), matched by file name",
    )


def add_evaluate_command(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="external validation: score a model on your own labelled films",
        description="Score a model on a folder of labelled films (no training): per-finding AUC with a bootstrap "
                    "95% CI of the mean, sensitivity and specificity at the model's thresholds.",
    )
    evaluate.add_argument("root", type=Path, metavar="ROOT", help="the folder the labels CSV's paths are relative to")
    evaluate.add_argument(
        "--labels", type=Path, required=True, metavar="CSV",
        help="path,labels,patient_id[,age,sex,view]: labels as NIH writes them ('Effusion|Mass', 'No Finding')",
    )
    evaluate.add_argument(
        "--out", type=Path, default=Path("reports/external"), metavar="DIR",
        help="where external.json and predictions.csv go (default reports/external)",
    )
    evaluate.add_argument(
        "--bootstrap", type=non_negative_int, default=1000, metavar="N",
        help="resamples of the patients for every 95%% CI (default 1000; 0 for none)",
    )
    evaluate.add_argument(
        "--min-positives", type=non_negative_int, default=MIN_POSITIVES, metavar="N",
        help=f"a finding's AUC needs this many positive and negative films, else it is not given "
             f"(default {MIN_POSITIVES}, as evaluate.min_slice_positives)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    add_model_options(evaluate)
    add_film_checks(evaluate)


class UsageError(ValueError):
    """Arguments that do not fit together; exit status 2."""


@dataclass
class PatientSource:
    """Where each image's age, sex and view come from: --age/--sex/--view for
    every image, else its --metadata row, else its DICOM header."""

    given: dict | None = None
    table: dict[str, dict] | None = None
    table_path: Path | None = None

    @property
    def from_user(self) -> bool:
        return self.given is not None or self.table is not None

    def for_film(self, image: str, film: Film) -> dict:
        name = Path(image).name
        if self.given is not None:
            return self.given
        if self.table is not None and name in self.table:
            return self.table[name]
        if film.patient is not None:
            return header_patient(film.patient, CLI_PATIENT_REMEDY)
        if self.table is not None:
            raise PatientMetadataError(f"no row for {name} in {self.table_path}")
        raise PatientMetadataError(NO_PATIENT_METADATA)


def patient_source(args: argparse.Namespace) -> PatientSource:
    """From --age/--sex/--view or --metadata; empty when neither is given (DICOM headers then)."""
    given = [name for name in ("age", "sex", "view") if getattr(args, name) is not None]
    required = [name for name in ("sex", "view") if getattr(args, name) is None]
    if given and required:  # an unknown age may be left out: the model imputes it (pipeline.core.patient)
        raise UsageError("give --sex and --view together (and --age when known)")
    if given and args.metadata is not None:
        raise UsageError("give either --age/--sex/--view or --metadata, not both")
    if given:
        row = {"age": args.age, "sex": args.sex, "view": args.view}
        encode_patient(**row)  # a bad age fails here, once, not per image
        return PatientSource(given=row)
    if args.metadata is None:
        return PatientSource()
    from pipeline.serve.predict import read_patient_metadata

    return PatientSource(table=read_patient_metadata(args.metadata), table_path=args.metadata)


def overlay_stems(images: list[str]) -> list[str]:
    """A distinct file-name stem per image, so that a/x.png and b/x.png do not
    overwrite each other's overlays."""
    stems: list[str] = []
    for image in images:
        base = Path(image).stem
        stem, n = base, 1
        while stem in stems:
            n += 1
            stem = f"{base}-{n}"
        stems.append(stem)
    return stems


def predict_batch(
    model: XrayModel, results: list[ImageResult], gradcam_dir: Path | None, batch_size: int,
    patients: PatientSource | None = None,
) -> None:
    """Fill in `results` (pipeline.serve.film_scores: one model call for the
    batch's readable images, and their metadata when `patients` is given)."""
    readers = [lambda result=result: model.read(result.image) for result in results]
    patient_of = None if patients is None else (
        lambda i: lambda film: patients.for_film(results[i].image, film))
    scored, images = score_films(model, results, readers, patient_of, batch_size)
    if gradcam_dir is not None and scored:
        write_overlays(model, scored, images, gradcam_dir, batch_size)


def label_overlay(picture: np.ndarray, caption: str) -> np.ndarray:
    """The caption in white on a dark band across the top, sized to the picture,
    so that an overlay shown on its own still says what it explains."""
    height, width = picture.shape[:2]
    band = max(12, round(height * 0.09))
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_width, text_height), _ = cv2.getTextSize(caption, font, 1.0, 1)
    scale = min(0.6 * band / text_height, 0.94 * width / text_width)
    thickness = max(1, round(scale * 1.4))
    (text_width, text_height), _ = cv2.getTextSize(caption, font, scale, thickness)
    labelled = picture.copy()
    labelled[:band] = (24, 24, 24)
    origin = (max(0, (width - text_width) // 2), (band + text_height) // 2)
    cv2.putText(labelled, caption, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return labelled


def write_overlays(
    model: XrayModel, results: list[ImageResult], images: np.ndarray, out_dir: Path, batch_size: int
) -> None:
    """Grad-CAM overlay PNGs, batched over (image, finding) pairs."""
    from pipeline.explain.gradcam import grad_cam, overlay_heatmap

    pairs = [(i, finding) for i, result in enumerate(results) for finding in result.findings_to_explain()]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        indices = np.array([i for i, _ in chunk])
        classes = np.array([model.findings.index(finding) for _, finding in chunk])
        encoded = np.stack([results[i].metadata for i in indices]) if model.uses_patient_metadata else None
        heatmaps = grad_cam(model.keras_model, images[indices], classes, metadata=encoded)
        for (i, finding), heatmap in zip(chunk, heatmaps):
            path = out_dir / f"{results[i].overlay_stem}_{finding}.png"
            caption = f"{finding} {results[i].probabilities[finding]:.2f}"
            if not cv2.imwrite(str(path), label_overlay(overlay_heatmap(images[i], heatmap), caption)):
                raise OSError(f"{path}: cannot write the Grad-CAM overlay")
            results[i].gradcam[finding] = str(path)


def any_dicom(images: list[str]) -> bool:
    """Whether any input may be a DICOM (its magic bytes, or the name), read from 132 bytes of each."""
    from pipeline.records.image_file import ImageError, check_regular_file
    from pipeline.serve.predict import is_dicom

    for image in images:
        try:
            check_regular_file(image)  # a FIFO would block the open below; reading the film names it
            with open(image, "rb") as file:
                if is_dicom(file.read(132), image):
                    return True
        except (OSError, ImageError):
            continue
    return False


def patients_for_model(model: XrayModel, source: PatientSource, images: list[str]) -> PatientSource | None:
    """The patient source a model needs (None for an image-only model); UsageError when nothing can give it."""
    if not model.uses_patient_metadata:
        if source.from_user:
            print(f"cxr: note: {model.source} takes no patient metadata; --age/--sex/--view/--metadata ignored",
                  file=sys.stderr)
        return None
    if not source.from_user and not any_dicom(images):
        raise UsageError(f"{model.source} was trained with patient metadata (train.use_metadata): give --age, "
                         f"--sex and --view, or --metadata CSV (a DICOM's header gives its own)")
    return source


def predict_command(args: argparse.Namespace) -> int:
    if args.gradcam is not None:
        try:
            args.gradcam.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"cxr: error: {args.gradcam}: cannot create the Grad-CAM directory: {exc.strerror}",
                  file=sys.stderr)
            return EXIT_FAILED
    quiet_environment()
    try:
        source = patient_source(args)
    except (UsageError, PatientMetadataError) as exc:  # PatientMetadataError here: a bad --age
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # an unreadable --metadata CSV
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from pipeline.serve.predict import ModelLoadError

    try:
        model = load_for_command(args)
    except ModelLoadError as exc:
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        patients = patients_for_model(model, source, args.images)
    except UsageError as exc:
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.json:
        print(f"model: {model.identity()}", flush=True)
    stems = overlay_stems(args.images)
    results = [ImageResult(image, overlay_stem=stem) for image, stem in zip(args.images, stems)]
    try:
        for start in range(0, len(results), args.batch_size):
            batch = results[start : start + args.batch_size]
            predict_batch(model, batch, args.gradcam, args.batch_size, patients)
            if not args.json:
                for result in batch:
                    if result.error is None:
                        print(result.as_text(), flush=True)
    except OSError as exc:
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps([r.as_json(args.gradcam is not None, model_fields(model)) for r in results], indent=2))
    return EXIT_FAILED if any(r.error is not None for r in results) else EXIT_OK


def evaluate_command(args: argparse.Namespace) -> int:
    """`cxr evaluate`: 0 when the films were scored (rejected and quarantined ones listed), 1 otherwise."""
    from pipeline.data.nih import DataEntryError
    from pipeline.serve import external
    from pipeline.serve.predict import ModelLoadError

    for path, what in ((args.root, "image folder"), (args.labels, "labels CSV")):
        if not path.exists():
            print(f"cxr: error: {path}: no such {what}", file=sys.stderr)
            return EXIT_FAILED
    try:
        model = load_for_command(args)
        print(f"model: {model.identity()}", flush=True)
        report = external.evaluate_external(model, args.root, args.labels, args.out, args.batch_size,
                                            args.bootstrap, args.seed, args.min_positives)
    except (ModelLoadError, DataEntryError, external.ExternalSetError, OSError) as exc:
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    external.print_problems(report)
    print(external.summary_table(report))
    print(f"report: {args.out / external.REPORT_FILE}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help (0) and usage errors (2)
        return EXIT_USAGE if exit_.code else EXIT_OK
    try:
        if args.command == "evaluate":
            quiet_environment()
            return evaluate_command(args)
        if args.command == "serve":
            quiet_environment()
            return serve_command(args)
        if args.command == "monitor":
            return monitor_command(args)
        if args.command == "artefact":
            return artefact_command(args)
        return predict_command(args)
    except Exception as exc:
        from pipeline.core.faults import system_fault_line

        fault = system_fault_line(exc)  # a full disk, memory: one line with the cause, not a traceback
        if fault is None or os.environ.get("PIPELINE_DEBUG"):
            raise
        print(f"cxr: error: {fault}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
