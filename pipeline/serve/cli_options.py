"""The options every cxr command that loads a model shares: which model (and
its store), the film checks, and the argument types they parse with."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipeline.core.config import project_registered_model
from pipeline.core.tracking import DEFAULT_TIMEOUT_S, DEFAULT_TRACKING_URI, HTTP_MAX_RETRIES, disable_telemetry
from pipeline.records.imaging import MAX_ASPECT, MIN_SIDE

if TYPE_CHECKING:  # the real import loads TensorFlow, so it waits until after argument parsing
    from pipeline.serve.xray_model import XrayModel

DEFAULT_MODEL = f"models:/{project_registered_model()}@champion"  # mlflow.registered_model of ./params.yaml


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def aspect_limit(text: str) -> float:
    value = float(text)
    if not value >= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least 1.0 (longer side / shorter side), got {text}")
    return value


def alpha_value(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_model_options(command: argparse.ArgumentParser) -> None:
    """The options that say which model answers, shared by predict and evaluate."""
    command.add_argument(
        "--model", default=DEFAULT_MODEL, metavar="URI",
        help=f"an MLflow URI (models:/name@alias, models:/name/version, runs:/run_id/model) "
             f"or a .keras file (default {DEFAULT_MODEL})",
    )
    command.add_argument(
        "--tracking-uri", metavar="URI",
        help=f"MLflow tracking store for models:/ and runs:/ URIs "
             f"(default $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})",
    )
    command.add_argument(
        "--timeout", type=positive_seconds, metavar="SECONDS",
        help=f"the most one call to a tracking server may wait, with {HTTP_MAX_RETRIES} quick retries "
             f"(default mlflow.timeout_s of ./params.yaml, else {DEFAULT_TIMEOUT_S}; "
             "MLFLOW_HTTP_REQUEST_TIMEOUT, if set, wins)",
    )
    command.add_argument(
        "--thresholds", metavar="JSON",
        help="{finding: threshold} file, e.g. reports/evaluate/thresholds.json "
             "(default: the registered model's; 0.5 for a bare .keras file)",
    )
    command.add_argument(
        "--batch-size", type=positive_int, default=16, metavar="N", help="images per model call (default 16)"
    )


def add_film_checks(command: argparse.ArgumentParser) -> None:
    checks = command.add_argument_group(
        "film checks", "made from the file's header, before decoding; a refused film is named with the reason"
    )
    checks.add_argument(
        "--min-side", type=positive_int, default=MIN_SIDE, metavar="PX",
        help=f"refuse a film whose shorter side has fewer pixels (default {MIN_SIDE})",
    )
    checks.add_argument(
        "--max-aspect", type=aspect_limit, default=MAX_ASPECT, metavar="RATIO",
        help=f"refuse a film whose longer side / shorter side is beyond this (default {MAX_ASPECT}; "
             "a chest film is near square)",
    )
    checks.add_argument(
        "--allow-lateral", action="store_true",
        help="predict DICOMs whose ViewPosition is lateral (LL, RL, LATERAL, LAT) too; "
             "the model learnt from PA/AP films only",
    )



def quiet_environment() -> None:
    """Before TensorFlow and MLflow load: no telemetry. (Library logs,
    warnings and progress bars are off from `import pipeline` on, unless
    PIPELINE_DEBUG=1: pipeline.core.quiet.)"""
    disable_telemetry()



def load_for_command(args: argparse.Namespace) -> XrayModel:
    """The model of --model, with the film checks of the command line (ModelLoadError if it cannot be served)."""
    from pipeline.serve.predict import FilmChecks, load_model

    model = load_model(args.model, tracking_uri=args.tracking_uri, thresholds=args.thresholds, timeout_s=args.timeout)
    model.checks = FilmChecks(args.min_side, args.max_aspect, args.allow_lateral)
    return model
