"""Why a film was refused, as `cxr predict`, `cxr evaluate` and the model
server say it: the reason without the film's name (the output already names
it); on the command line, with the option where imaging names the preprocess
stage's param."""
from __future__ import annotations

from pipeline.core.patient import PatientMetadataError
from pipeline.records.film import LateralViewError

PARAM_OPTIONS = {"preprocess.min_side": "--min-side", "preprocess.max_aspect": "--max-aspect"}
FRONTAL_ONLY = "the model was trained on frontal PA/AP films"
LATERAL_ADVICE = f"{FRONTAL_ONLY}; --allow-lateral to predict anyway"


def error_reason(exc: Exception, image: str, command_line: bool = True) -> str:
    """An error's reason without the film name that imaging's messages start
    with; with `command_line`, the command-line option where imaging names the
    preprocess stage's param (a served model has no options to offer)."""
    if isinstance(exc, LateralViewError):
        return f"lateral view (ViewPosition {exc.view}): {LATERAL_ADVICE if command_line else FRONTAL_ONLY}"
    if isinstance(exc, PatientMetadataError):
        return f"patient metadata: {exc}"
    reason = str(exc).removeprefix(f"{image}: ")
    if command_line:
        for param, option in PARAM_OPTIONS.items():
            reason = reason.replace(param, option)
    return reason
