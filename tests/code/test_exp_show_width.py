"""The README's `dvc exp show` line fits 120 columns on an experiment that
changes two params.

Its width depends on the column names (the project's metric keys and param
names) and the widths of their values, not on how the figures were made: the
repo here has the project's params.yaml and committed metrics/*.json, and one
stage that rewrites those metrics with other values when params change, so
that a real `dvc exp run -S ... -S ...` takes seconds, not a training."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

WIDTH = 120
STAGE = """\
import json, pathlib, random, yaml
params = yaml.safe_load(open("params.yaml"))
random.seed(params["train"]["epochs"])
for source in sorted(pathlib.Path("committed").glob("*.json")):
    figures = json.loads(source.read_text())
    figures = {k: round(random.random(), 4) if isinstance(v, float) else v for k, v in figures.items()}
    pathlib.Path("metrics", source.name).write_text(json.dumps(figures))
"""


def readme_command(prefix: str) -> str:
    """The README's line that starts with `prefix`."""
    return next(line.strip() for line in (PROJECT_ROOT / "README.md").read_text().splitlines()
                if line.strip().startswith(prefix))


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "COLUMNS": "400",  # wide: rich prints the table unsqueezed
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result


def test_the_readme_exp_show_line_fits_120_columns(tmp_path):
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    (tmp_path / "committed").mkdir()
    (tmp_path / "metrics").mkdir()
    metrics = sorted((PROJECT_ROOT / "metrics").glob("*.json"))
    for path in metrics:
        (tmp_path / "committed" / path.name).write_text(path.read_text())
    (tmp_path / "stage.py").write_text(STAGE)
    deps = ["stage.py", "committed", str(PROJECT_ROOT / "src")]  # a dependency outside the repo: an absolute path
    (tmp_path / "dvc.yaml").write_text(json.dumps({"stages": {"figures": {
        "cmd": "python stage.py", "deps": deps, "params": ["seed", "train"],
        "metrics": [{f"metrics/{p.name}": {"cache": False}} for p in metrics]}}}))
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    run(["dvc", "repro", "-q"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], tmp_path)
    run(["dvc", "exp", "run", "-q", "-S", "train.epochs=10", "-S", "train.learning_rate=0.0005"], tmp_path)

    table = run(shlex.split(readme_command("dvc exp show")), tmp_path).stdout
    lines = table.splitlines()
    assert any("train.learning_rate" in line for line in lines) and any("mean_auc" in line for line in lines)
    assert "auc_ci_low" in table and not any("/" in line for line in lines), table  # no dependency columns
    assert max(len(line) for line in lines) <= WIDTH, table
    # the line before: more columns than 120 (the check can fail)
    wide = run(["dvc", "exp", "show", "--only-changed", "--drop", "Created|State|Executor"], tmp_path).stdout
    assert max(len(line) for line in wide.splitlines()) > WIDTH
