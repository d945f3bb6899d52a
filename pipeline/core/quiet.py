"""Library noise off, so that a user sees the pipeline's own lines only.

TensorFlow's C++ logging (oneDNN notices, cpu_feature_guard, absl's "All log
messages before absl::InitializeLog()", the E0000 DT_BOOL line), MLflow's
INFO and warnings (type hints, cloudpickle, "Creating initial MLflow database
tables") and its artifact-download progress bar are off by default in the
stages, `cxr` and the prediction API. PIPELINE_DEBUG=1 brings them all back.

TensorFlow reads TF_CPP_MIN_LOG_LEVEL when it loads, so quiet_libraries()
must run before the first `import tensorflow` of the process to quiet it.
Some builds print absl's pre-initialisation notice and the oneDNN notice at
import whatever that level says (tensorflow-cpu 2.21.0 on AVX-512 machines):
the first `import tensorflow` then runs with the native stderr captured, and
every other line it printed is passed on.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator

MLFLOW_DB_LOGGER = "mlflow.store.db.utils"
NOISY_LOGGERS = ("mlflow", "alembic", "absl", "tensorflow", "h5py", "urllib3", "great_expectations")
# Warnings of these modules are advice to library authors (type hints,
# pickling, deprecations), not to someone running the pipeline.
NOISY_WARNING_MODULES = r"(mlflow|cloudpickle|keras|tensorflow|absl|google|great_expectations|pydantic|sqlalchemy)"
NOISY_WARNING_FILE = re.compile(r"[/\\]site-packages[/\\]" + NOISY_WARNING_MODULES + r"[/\\]")
# MLflow attributes some warnings to the caller's module (stacklevel), so by text too.
NOISY_WARNING_TEXT = re.compile(r"(?s).*(type hint|cloudpickle|input example)")
# What TensorFlow's native code prints at import past TF_CPP_MIN_LOG_LEVEL.
NOISY_NATIVE_LINE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
                               r"STDERR|I0000 [^\]]*\] oneDNN custom operations are on")


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
    # It logs every database error with its traceback (90 lines for a full disk)
    # before raising it; the stage's one line already says what failed.
    logging.getLogger(MLFLOW_DB_LOGGER).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=NOISY_WARNING_MODULES)
    warnings.filterwarnings("ignore", message=NOISY_WARNING_TEXT.pattern)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))
    # MLflow wraps some calls in `simplefilter("once", UserWarning)`, which
    # outranks any filter, so its warnings are also dropped where they are shown.
    if not getattr(warnings.showwarning, "quiet", False):
        warnings.showwarning = _quiet_showwarning(warnings.showwarning)


# File descriptor 2 is the process's: two threads swapping it at once could leave it swapped.
_NATIVE_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Run the block with file descriptor 2 (where C and C++ code write, past
    sys.stderr) captured; the yielded list holds the captured lines once the block ends."""
    lines: list[str] = []
    with _NATIVE_STDERR_LOCK, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode(errors="replace").splitlines())


@contextlib.contextmanager
def native_stderr_filtered():
    """Run the block with file descriptor 2 captured, then pass on every line
    but NOISY_NATIVE_LINE ones."""
    captured: list[str] = []
    try:
        with native_stderr_captured() as captured:
            yield
    finally:
        kept = [line for line in captured if not NOISY_NATIVE_LINE.match(line)]
        if kept:
            print("\n".join(kept), file=sys.stderr, flush=True)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `name` the usual way once, and runs its module code under native_stderr_filtered."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader
        with native_stderr_filtered():
            self.loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


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
