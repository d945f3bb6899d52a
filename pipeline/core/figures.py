"""A stage's figures in two files.

DVC shows every key of every metrics file as one column of one table
(`dvc metrics show`, `dvc exp show`), so metrics/<stage>.json holds only a
few scalars: the summary a user compares between experiments. The whole
record (per-finding CIs, operating points, the registry's decision, subgroup
slices) goes to a report JSON beside the stage's other reports, with the
same key names, where it is an output of the stage, not a metric.
"""
from __future__ import annotations

import math
from pathlib import Path

from pipeline.core.atomic import write_json_atomic

SUMMARY_DECIMALS = 4


def scalar_summary(values: dict) -> dict:
    """`values` with floats rounded to SUMMARY_DECIMALS; refuses anything that is
    not a number, a bool or None (a list or a dict would widen DVC's table)."""
    summary = {}
    for key, value in values.items():
        if value is not None and not isinstance(value, int | float):
            raise TypeError(f"summary metric {key} must be a number, bool or None, not {type(value).__name__}")
        if isinstance(value, float):
            value = None if math.isnan(value) else round(value, SUMMARY_DECIMALS)
        summary[key] = value
    return summary


def write_stage_figures(summary: dict, detail: dict, metrics_file: Path, report_file: Path) -> None:
    """The detail to `report_file`, then the scalar summary to `metrics_file`."""
    write_json_atomic(Path(report_file), detail)
    write_json_atomic(Path(metrics_file), scalar_summary(summary))
