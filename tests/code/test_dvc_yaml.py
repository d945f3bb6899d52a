"""dvc.yaml: each stage declares what it reads, and DVC accepts the graph."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

STAGES = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def test_ingest_depends_on_the_data_root():
    # a changed metadata CSV, box list, split list or image set must rerun ingest
    assert "${ingest.root}" in STAGES["ingest"]["deps"]
    assert "${paths.phantom}" in STAGES["phantom"]["outs"]
    assert set(STAGES["ingest"]["outs"]) == {"${paths.manifest}", "${paths.boxes}"}


def test_validate_declares_its_html_report():
    assert "${paths.validation_report}" in STAGES["validate"]["outs"]
    assert "pipeline/validation_report.py" in STAGES["validate"]["deps"]


def dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    command = [str(Path(sys.executable).parent / "dvc"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("source", ["phantom", "nih"])
def test_dvc_accepts_the_graph(tmp_path, source):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(PROJECT_ROOT / "dvc.yaml", project / "dvc.yaml")
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    if source == "nih":
        params["ingest"].update(source="nih", root=str(tmp_path / "nih"))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    assert dvc(["init", "-q"], project).returncode == 0
    dag = dvc(["dag", "--dot"], project)
    assert dag.returncode == 0, dag.stderr
    if source == "phantom":
        assert '"phantom" -> "ingest"' in dag.stdout
    assert '"ingest" -> "validate"' in dag.stdout and '"validate" -> "preprocess"' in dag.stdout
