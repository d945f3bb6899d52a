"""Why a film was refused, as `cxr predict` and `cxr evaluate` say it: the
reason without the file name (the output already names it), with the
command-line option where imaging names the preprocess stage's param."""
from __future__ import annotations

from pipeline.core.patient import PatientMetadataError

PARAM_OPTIONS = {"preprocess.min_side": "--min-side", "preprocess.max_aspect": "--max-aspect"}
LATERAL_ADVICE = "the model was trained on frontal PA/AP films; --allow-lateral to predict anyway"


def error_reason(exc: Exception, image: str) -> str:
    """An error's reason without the file name that imaging's messages start with,
    and with the command-line option where imaging names the preprocess stage's param."""
    from pipeline.serve.predict import LateralViewError

    if isinstance(exc, LateralViewError):
        return f"lateral view (ViewPosition {exc.view}): {LATERAL_ADVICE}"
    if isinstance(exc, PatientMetadataError):
        return f"patient metadata: {exc}"
    reason = str(exc).removeprefix(f"{image}: ")
    for param, option in PARAM_OPTIONS.items():
        reason = reason.replace(param, option)
    return reason
