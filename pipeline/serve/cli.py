"""cxr: chest X-ray findings from the command line.

    cxr predict IMAGE... [--model URI] [--gradcam DIR] [--json] [--tracking-uri URI]
                [--age YEARS --sex M|F --view PA|AP | --metadata CSV]

A model trained with patient metadata (train.use_metadata) needs each
image's age, sex and view: the same for every image with --age/--sex/--view,
or per image from --metadata (NIH's Data_Entry_2017.csv, or any CSV with
image_id, age, sex and view), matched by file name.

Results go to stdout (one line per image, or one JSON list with --json);
problems go to stderr as `cxr: error: <file>: <reason>`. A bad image does not
stop the others. Exit status: 0 all images predicted, 1 an image or the model
failed, 2 a usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.core.labels import SEXES, VIEWS
from pipeline.core.patient import PatientMetadataError, encode_patient
from pipeline.core.tracking import DEFAULT_TRACKING_URI, disable_telemetry
from pipeline.records.imaging import ImageError

if TYPE_CHECKING:  # the real import loads TensorFlow, so it waits until after argument parsing
    from pipeline.serve.predict import XrayModel

DEFAULT_MODEL = "models:/chestxray@champion"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class ImageResult:
    """One input image's outcome: probabilities and positive findings, or an error."""

    image: str
    overlay_stem: str
    probabilities: dict[str, float] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    gradcam: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    metadata: np.ndarray | None = None  # encoded (pipeline.core.patient), for a model that takes it

    def as_json(self, with_gradcam: bool) -> dict:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        out = {"image": self.image, "probabilities": self.probabilities, "findings": self.findings}
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr", description="Chest X-ray findings (NIH ChestX-ray14's 14 labels)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict",
        help="predict the 14 findings for PNG/JPEG X-rays",
        description="Predict the 14 findings for PNG/JPEG X-rays, preprocessed exactly as in training.",
    )
    predict.add_argument(
        "images", nargs="+", metavar="IMAGE", help="PNG or JPEG files (8/16-bit, gray/RGB/RGBA)"
    )
    predict.add_argument(
        "--model", default=DEFAULT_MODEL, metavar="URI",
        help=f"an MLflow URI (models:/name@alias, models:/name/version, runs:/run_id/model) "
             f"or a .keras file (default {DEFAULT_MODEL})",
    )
    predict.add_argument(
        "--tracking-uri", metavar="URI",
        help=f"MLflow tracking store for models:/ and runs:/ URIs "
             f"(default $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})",
    )
    predict.add_argument(
        "--thresholds", metavar="JSON",
        help="{finding: threshold} file, e.g. reports/evaluate/thresholds.json "
             "(default: the registered model's; 0.5 for a bare .keras file)",
    )
    predict.add_argument(
        "--gradcam", type=Path, metavar="DIR",
        help="write a Grad-CAM overlay PNG into DIR for each positive finding (or the top one if none)",
    )
    predict.add_argument("--json", action="store_true", help="print one JSON list, an object per image")
    predict.add_argument(
        "--batch-size", type=positive_int, default=16, metavar="N", help="images per model call (default 16)"
    )
    patient = predict.add_argument_group(
        "patient metadata", "needed by a model trained with train.use_metadata; ignored (with a note) otherwise"
    )
    patient.add_argument("--age", type=float, metavar="YEARS", help="patient age, for every image")
    patient.add_argument("--sex", choices=SEXES, type=str.upper, help="patient sex, for every image")
    patient.add_argument("--view", choices=VIEWS, type=str.upper, help="view position, for every image")
    patient.add_argument(
        "--metadata", type=Path, metavar="CSV",
        help="per-image age, sex and view: NIH's Data_Entry_2017.csv or a CSV with columns image_id, age, sex, "
             "view (e.g. data/ingest/manifest.csv), matched by file name",
    )
    return parser


PatientLookup = Callable[[str], dict]


class UsageError(ValueError):
    """Arguments that do not fit together; exit status 2."""


def patient_lookup(args: argparse.Namespace) -> PatientLookup | None:
    """image path -> its {"age", "sex", "view"} (PatientMetadataError if it has
    none), from --age/--sex/--view or --metadata; None when neither is given."""
    given = [name for name in ("age", "sex", "view") if getattr(args, name) is not None]
    if given and len(given) < 3:
        raise UsageError("give --age, --sex and --view together")
    if given and args.metadata is not None:
        raise UsageError("give either --age/--sex/--view or --metadata, not both")
    if given:
        row = {"age": args.age, "sex": args.sex, "view": args.view}
        encode_patient(**row)  # a bad age fails here, once, not per image
        return lambda image: row
    if args.metadata is None:
        return None
    from pipeline.serve.predict import read_patient_metadata

    table = read_patient_metadata(args.metadata)

    def lookup(image: str) -> dict:
        name = Path(image).name
        if name not in table:
            raise PatientMetadataError(f"no row for {name} in {args.metadata}")
        return table[name]

    return lookup


def quiet_environment() -> None:
    """Before TensorFlow and MLflow load: no telemetry. (Library logs,
    warnings and progress bars are off from `import pipeline` on, unless
    PIPELINE_DEBUG=1: pipeline.core.quiet.)"""
    disable_telemetry()


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
    metadata: PatientLookup | None = None,
) -> None:
    """Fill in `results`: one model call for the batch's readable images (and
    their metadata, when `metadata` is given)."""
    loaded: list[tuple[ImageResult, np.ndarray]] = []
    for result in results:
        try:
            if metadata is not None:
                result.metadata = encode_patient(**metadata(result.image))
            loaded.append((result, model.preprocess(result.image)))
        except PatientMetadataError as exc:
            result.error = f"{result.image}: patient metadata: {exc}"
            print(f"cxr: error: {result.error}", file=sys.stderr, flush=True)
        except ImageError as exc:
            result.error = str(exc)
            print(f"cxr: error: {result.error}", file=sys.stderr, flush=True)
    if not loaded:
        return
    images = np.stack([image for _, image in loaded])
    encoded = np.stack([result.metadata for result, _ in loaded]) if metadata is not None else None
    for (result, _), probabilities in zip(loaded, model.predict(images, encoded, batch_size=batch_size)):
        result.probabilities = {f: float(p) for f, p in zip(model.findings, probabilities)}
        result.findings = model.positive_findings(probabilities)
    if gradcam_dir is not None:
        write_overlays(model, [result for result, _ in loaded], images, gradcam_dir, batch_size)


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
            if not cv2.imwrite(str(path), overlay_heatmap(images[i], heatmap)):
                raise OSError(f"{path}: cannot write the Grad-CAM overlay")
            results[i].gradcam[finding] = str(path)


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
        metadata = patient_lookup(args)
    except (UsageError, PatientMetadataError) as exc:  # PatientMetadataError here: a bad --age
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # an unreadable --metadata CSV
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from pipeline.serve.predict import ModelLoadError, load_model

    try:
        model = load_model(args.model, tracking_uri=args.tracking_uri, thresholds=args.thresholds)
    except ModelLoadError as exc:
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if model.uses_patient_metadata and metadata is None:
        print(f"cxr: error: {model.source} was trained with patient metadata (train.use_metadata): give --age, "
              f"--sex and --view, or --metadata CSV", file=sys.stderr)
        return EXIT_USAGE
    if metadata is not None and not model.uses_patient_metadata:
        print(f"cxr: note: {model.source} takes no patient metadata; --age/--sex/--view/--metadata ignored",
              file=sys.stderr)
        metadata = None
    results = [ImageResult(image, stem) for image, stem in zip(args.images, overlay_stems(args.images))]
    try:
        for start in range(0, len(results), args.batch_size):
            batch = results[start : start + args.batch_size]
            predict_batch(model, batch, args.gradcam, args.batch_size, metadata)
            if not args.json:
                for result in batch:
                    if result.error is None:
                        print(result.as_text(), flush=True)
    except OSError as exc:
        print(f"cxr: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps([r.as_json(args.gradcam is not None) for r in results], indent=2))
    return EXIT_FAILED if any(r.error is not None for r in results) else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help (0) and usage errors (2)
        return EXIT_USAGE if exit_.code else EXIT_OK
    return predict_command(args)


if __name__ == "__main__":
    sys.exit(main())
