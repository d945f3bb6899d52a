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
    assert set(STAGES["ingest"]["outs"]) == {"${paths.manifest}", "${paths.boxes}", "${paths.ingest_report}",
                                                  "${paths.rejected_rows}"}


def test_validate_declares_its_html_report():
    assert "${paths.validation_report}" in STAGES["validate"]["outs"]
    assert "pipeline/data/validation_report.py" in STAGES["validate"]["deps"]


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


# Modules that cannot change a stage's outputs: a change to them reruns nothing.
NOT_OUTPUT_AFFECTING = {
    "pipeline/__init__.py",
    "pipeline/core/stage.py",  # error reporting
    "pipeline/core/progress.py",  # progress lines
    "pipeline/core/config.py",  # reads params.yaml, whose values are declared as params
    "pipeline/core/settings.py",  # checks params.yaml's values, declared as params
    "pipeline/core/faults.py",  # error lines
    "pipeline/core/atomic.py",  # how files are written, not what
    "pipeline/core/tracking.py",  # MLflow logging
    "pipeline/core/quiet.py",  # library log lines
    "pipeline/core/store_lock.py",  # MLflow store checks and locks
}


# Modules a stage imports only to check its params before the work, whose
# content cannot change that stage's outputs: preprocess refuses an image size
# below the backbone's smallest (pipeline.model.backbones) before it writes a
# shard, but its shards are the same whatever the backbone records say.
CHECK_ONLY = {"preprocess": {"pipeline/model/backbones.py"}}


def local_imports(path: Path, check_only: frozenset[str] = frozenset()) -> set[str]:
    """pipeline/*.py modules that `path` imports, at any depth, module- or
    function-level (not those of check_only, nor what they import)."""
    import ast

    found: set[str] = set()
    pending = [path]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("pipeline")]
            for name in names:
                relative = name.replace(".", "/") + ".py"
                if (PROJECT_ROOT / relative).is_file() and relative not in found and relative not in check_only:
                    found.add(relative)
                    if relative not in NOT_OUTPUT_AFFECTING:  # e.g. stage.py imports error classes only
                        pending.append(PROJECT_ROOT / relative)
    return found


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_depends_on_the_code_it_runs(stage):
    script = f"src/{stage}.py"
    assert STAGES[stage]["cmd"] == f"python {script}"
    code = {script} | local_imports(PROJECT_ROOT / script, frozenset(CHECK_ONLY.get(stage, ())))
    declared = {d for d in STAGES[stage]["deps"] if d.endswith(".py")}
    missing = code - NOT_OUTPUT_AFFECTING - declared
    assert not missing, f"stage {stage} runs {sorted(missing)} but does not list them as deps"
    unused = declared - code
    assert not unused, f"stage {stage} lists {sorted(unused)} as deps but never imports them"
