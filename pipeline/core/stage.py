"""What every stage script shares: params, a quiet TensorFlow, one-line failures."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from pipeline.core.tracking import TrackingServerError, disable_telemetry

disable_telemetry()


class StageError(RuntimeError):
    """A failure with a message meant for the user; printed as one line."""


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage's main(); a known failure prints `<stage>: error: ...` and exits 1.

    Set PIPELINE_DEBUG=1 for the full traceback.
    """
    from pipeline.core.config import ConfigError
    from pipeline.core.labels import LabelError
    from pipeline.data.nih import DataEntryError
    from pipeline.records.imaging import ImageError

    expected = (StageError, ConfigError, ImageError, LabelError, DataEntryError, FileNotFoundError, ValueError,
                TrackingServerError)
    try:
        main()
    except expected as exc:
        if os.environ.get("PIPELINE_DEBUG"):
            raise
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
