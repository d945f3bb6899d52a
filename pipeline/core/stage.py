"""What every stage script shares: params, a quiet TensorFlow, one-line failures,
and a stage that ends its MLflow run as KILLED when it is stopped."""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.core.settings import Settings, load_settings
from pipeline.core.tracking import TrackingServerError, disable_telemetry

disable_telemetry()

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
CAUSE_MAX_CHARS = 400


class StageError(RuntimeError):
    """A failure with a message meant for the user; printed as one line."""


class StageStopped(BaseException):
    """The stage got a stop signal; a BaseException so that no `except Exception` swallows it."""

    def __init__(self, signum: int, run_id: str | None):
        super().__init__(signum)
        self.signum = signum
        self.run_id = run_id


def end_active_run_as_killed() -> str | None:
    """End the active MLflow run (if MLflow is loaded and a run is active) as KILLED; its id."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return None
    run_id = mlflow.active_run().info.run_id
    try:
        mlflow.end_run("KILLED")
    except Exception:  # a store that is gone: the stage stops all the same
        return None
    return run_id


def _stop(signum, frame) -> None:
    # Ended here, before the exception unwinds: mlflow's `with start_run()` would
    # record any exception as FAILED; a second signal gets the default action.
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_DFL)
    raise StageStopped(signum, end_active_run_as_killed())


def die_with_parent() -> None:
    """Linux: the kernel sends this process SIGTERM when its parent dies (dvc repro
    killed with -9), so the stage is not orphaned and ends its run as KILLED."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return


def store_failure(exc: BaseException, uri: str | None = None) -> str | None:
    """`MLflow store <uri>: <cause>` for an MLflow, SQLAlchemy, sqlite3 or requests error, else None;
    `uri` is the store the failing client was given (default: MLflow's process-wide tracking URI).

    Only classes already imported are checked: if MLflow was never loaded the
    error cannot be its, and a stage that does not track stays light."""
    kinds = [getattr(sys.modules.get(module), name, None) for module, name in (
        ("mlflow.exceptions", "MlflowException"), ("sqlalchemy.exc", "SQLAlchemyError"), ("sqlite3", "Error"),
        ("requests.exceptions", "RequestException"))]
    kinds = tuple(kind for kind in kinds if isinstance(kind, type))
    if not kinds or not isinstance(exc, kinds):
        return None
    from pipeline.core.tracking import redacted, tracking_uri

    if uri is None:
        mlflow = sys.modules.get("mlflow")
        uri = mlflow.get_tracking_uri() if mlflow is not None else tracking_uri()
    from pipeline.core.faults import first_line

    return f"MLflow store {redacted(uri)}: {first_line(exc, CAUSE_MAX_CHARS)}"


def remove_stale_staging(paths: dict[str, Path]) -> None:
    """Delete what killed stages left beside any output of params.yaml's `paths`
    (a killed preprocess leaves `.tfrecords.<pid>.*.tmp`, gigabytes at full
    scale): each stage clears them all, since a run that DVC restores from its
    cache runs none of the stages whose staging they are. Only temporaries of
    dead processes are removed (pipeline.core.atomic)."""
    from pipeline.core.atomic import remove_stale_temporaries

    for path in paths.values():
        remove_stale_temporaries(path)


def run_stage(name: str, main: Callable[[Settings], None]) -> None:
    """Run a stage's main(settings) with params.yaml read and checked first
    (pipeline.core.settings), so a bad param stops it before any work; a known
    failure prints `<stage>: error: ...` and exits 1;
    SIGTERM, SIGINT or SIGHUP (or the parent's death) end the MLflow run as KILLED
    and exit 128 + the signal.

    Set PIPELINE_DEBUG=1 for the full traceback.
    """
    from pipeline.core.store_lock import StoreError

    # ValueError covers ConfigError, a film's ImageError, LabelError and a CSV's DataEntryError.
    expected = (StageError, FileNotFoundError, ValueError, TrackingServerError, StoreError)
    previous = {stop_signal: signal.signal(stop_signal, _stop) for stop_signal in STOP_SIGNALS}
    die_with_parent()
    try:
        settings = load_settings()
        remove_stale_staging(settings.paths)
        main(settings)
    except StageStopped as stopped:
        ended = f"; MLflow run {stopped.run_id} ended as KILLED" if stopped.run_id else ""
        print(f"{name}: stopped by {signal.Signals(stopped.signum).name}{ended}", file=sys.stderr)
        sys.exit(128 + stopped.signum)
    except Exception as exc:
        if os.environ.get("PIPELINE_DEBUG"):
            raise
        from pipeline.core.faults import system_fault_line

        # The true cause first (a full disk can surface as a ValueError or a store
        # failure), unless the stage already composed its own line around it.
        fault = None if isinstance(exc, StageError) else system_fault_line(exc)
        message = fault or (str(exc) if isinstance(exc, expected) else store_failure(exc))
        if message is None:
            raise
        print(f"{name}: error: {message}", file=sys.stderr)
        sys.exit(1)
    finally:
        for stop_signal, handler in previous.items():
            if signal.getsignal(stop_signal) is _stop:
                signal.signal(stop_signal, handler)
