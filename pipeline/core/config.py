"""The one place that reads params.yaml (pipeline.core.settings checks it),
and the few values the command-line tools take from a project folder's copy.

params.yaml holds every knob, including the `paths` section that dvc.yaml
also reads through its `${paths.*}` templating, so a path is spelled once.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """A params.yaml that is missing, malformed or holds an invalid value."""


def load_params(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml (from the current directory: DVC runs stages in the repo root)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run stages from the project root)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


# params.yaml's mlflow.registered_model as a new project has it: what the
# command-line tools name when run outside a project folder.
DEFAULT_REGISTERED_MODEL = "chestxray"


def project_mlflow_param(key: str):
    """mlflow.<key> of params.yaml in the working directory, or None (no such
    file or value, or a broken file: a stage reports that itself). For `cxr`
    and the registry command run in a project folder."""
    try:
        mlflow = load_params(PARAMS_FILE).get("mlflow") if PARAMS_FILE.is_file() else None
    except ConfigError:
        return None
    return mlflow.get(key) if isinstance(mlflow, dict) else None


def params_timeout_s(default: float) -> float:
    """mlflow.timeout_s of the working directory's params.yaml, else `default`."""
    value = project_mlflow_param("timeout_s")
    return float(value) if isinstance(value, (int, float)) and value > 0 else float(default)


def project_registered_model() -> str:
    """mlflow.registered_model of the working directory's params.yaml, else DEFAULT_REGISTERED_MODEL."""
    value = project_mlflow_param("registered_model")
    return value if isinstance(value, str) and value.strip() else DEFAULT_REGISTERED_MODEL


def worker_count(requested: int | None) -> int:
    """0 or None means all cores this process may use."""
    if requested and int(requested) > 0:
        return int(requested)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
