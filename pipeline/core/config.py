"""Params and paths: the one place that reads params.yaml.

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


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """A top-level section of params, with a clear error when it is absent."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml: section '{name}' is missing or not a mapping")
    return value


def path_of(params: dict[str, Any], key: str) -> Path:
    """A path from the `paths` section of params.yaml."""
    paths = section(params, "paths")
    if key not in paths:
        raise ConfigError(f"params.yaml: paths.{key} is missing")
    return Path(paths[key])


def worker_count(requested: int | None) -> int:
    """0 or None means all cores this process may use."""
    if requested and int(requested) > 0:
        return int(requested)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def phantom_root(params: dict) -> Path:
    """paths.phantom, where the phantom stage writes the synthetic data set;
    with ingest.source phantom, ingest.root must name this same folder."""
    ingest, phantom_dir = section(params, "ingest"), path_of(params, "phantom")
    if ingest["source"] == "phantom" and Path(ingest["root"]).absolute() != phantom_dir.absolute():
        raise ConfigError(
            f"ingest.root is {ingest['root']} but must be {phantom_dir} (paths.phantom) when "
            f"ingest.source is phantom"
        )
    return phantom_dir
