"""Library noise off, so that a user sees the pipeline's own lines only.

TensorFlow's C++ logging (oneDNN notices, cpu_feature_guard, absl's "All log
messages before absl::InitializeLog()", the E0000 DT_BOOL line), MLflow's
INFO and warnings (type hints, cloudpickle, "Creating initial MLflow database
tables") and its artifact-download progress bar are off by default in the
stages, `cxr` and the prediction API. PIPELINE_DEBUG=1 brings them all back.

TensorFlow reads TF_CPP_MIN_LOG_LEVEL when it loads, so quiet_libraries()
must run before the first `import tensorflow` of the process to quiet it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings

NOISY_LOGGERS = ("mlflow", "alembic", "absl", "tensorflow", "h5py", "urllib3", "great_expectations")
# Warnings of these modules are advice to library authors (type hints,
# pickling, deprecations), not to someone running the pipeline.
NOISY_WARNING_MODULES = r"(mlflow|cloudpickle|keras|tensorflow|absl|google|great_expectations|pydantic|sqlalchemy)"
NOISY_WARNING_FILE = re.compile(r"[/\\]site-packages[/\\]" + NOISY_WARNING_MODULES + r"[/\\]")
# MLflow attributes some warnings to the caller's module (stacklevel), so by text too.
NOISY_WARNING_TEXT = re.compile(r"(?s).*(type hint|cloudpickle|input example)")


def debugging() -> bool:
    return os.environ.get("PIPELINE_DEBUG", "").lower() not in ("", "0", "false", "no")


def quiet_libraries() -> None:
    """Turn library logging and warnings off, unless PIPELINE_DEBUG is set.
    Each environment variable is only set when the user has not set it."""
    if debugging():
        return
    # 3 = errors too: TF prints its harmless oneDNN "E0000" line at error level;
    # real failures still arrive as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=NOISY_WARNING_MODULES)
    warnings.filterwarnings("ignore", message=NOISY_WARNING_TEXT.pattern)
    # MLflow wraps some calls in `simplefilter("once", UserWarning)`, which
    # outranks any filter, so its warnings are also dropped where they are shown.
    if not getattr(warnings.showwarning, "quiet", False):
        warnings.showwarning = _quiet_showwarning(warnings.showwarning)


def _quiet_showwarning(show):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if NOISY_WARNING_FILE.search(str(filename)) or NOISY_WARNING_TEXT.search(str(message)):
            return
        show(message, category, filename, lineno, file, line)

    showwarning.quiet = True
    return showwarning


@contextlib.contextmanager
def mlflow_event_lines_off():
    """Silence MLflow's event lines ("Successfully registered model ...",
    "Created version ...") for the block: MLflow prints them with `eprint`,
    straight to its own stream, past any logging level. Failures still
    arrive as exceptions."""
    if debugging():
        yield
        return
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    was_enabled = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = was_enabled
