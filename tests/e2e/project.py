"""Building blocks of the end-to-end tests: a project as a fresh clone holds
it, in a temp git repo, on a tiny configuration; running DVC in it; waiting
for DVC's experiment queue."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

TINY = {
    "ingest.phantom.n_images": 90,
    "ingest.phantom.image_size": 256,
    "preprocess.image_size": 64,
    "preprocess.shard_size": 25,
    "train.backbone": "small_cnn",
    "train.epochs": 2,
    "train.batch_size": 8,
    "explain.top_k": 1,
    "explain.false_positives": 1,
    "explain.false_negatives": 1,
    "explain.max_localisation_images": 10,
    # a test split of about 13 films: floors of 2, so that some AUCs and the comparison are figures at all
    "evaluate.min_slice_positives": 2,
    "evaluate.min_slice_patients": 2,
}


def set_param(params: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        params = params[key]
    assert leaf in params, f"params.yaml has no {dotted}"
    params[leaf] = value


# What a project copy leaves out of a clone's files: the suite itself, and what no stage reads.
NOT_COPIED = ("tests/", "benchmarks/", "docs/", ".github/", ".ci/")


def clone_files(root: Path = PROJECT_ROOT) -> list[str]:
    """The files a fresh clone of `root` would hold (tracked, and new ones git
    does not ignore: the working tree as it would be committed), by relative path."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sorted(name for name in listed if name and os.path.lexists(root / name))


def make_project(destination: Path, overrides: dict, leave_out: tuple[str, ...] = NOT_COPIED) -> Path:
    """A fresh git + DVC repo holding what a clone of the project holds (its
    pipeline, the committed dvc.lock, metrics and plot CSVs of the default run,
    whose cached outputs are in no cache here), with `overrides` set in
    params.yaml and committed, as a user would commit their own settings."""
    destination.mkdir()
    for name in clone_files():
        if leave_out and name.startswith(leave_out):
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target, follow_symlinks=False)
    write_params(destination, overrides, yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))
    run(["git", "init", "-q", "-b", "main"], destination)
    commit_all(destination, "project")
    return destination


def write_params(project: Path, overrides: dict, params: dict | None = None) -> None:
    """`overrides` set in `params` (default: the project's own params.yaml)."""
    params = params if params is not None else yaml.safe_load((project / "params.yaml").read_text())
    for key, value in overrides.items():
        set_param(params, key, value)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def commit_all(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], project)


def copy_project(prepared: Path, destination: Path, overrides: dict | None = None) -> Path:
    """A copy of a prepared project (git history, DVC cache and outputs), with
    `overrides` set in params.yaml and committed."""
    shutil.copytree(prepared, destination, symlinks=True)
    if overrides:
        write_params(destination, overrides)
        commit_all(destination, "params")
    return destination


def pipeline_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    return env


def run(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=pipeline_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


# Two tiny pipelines side by side take 2.5-3 minutes on a 2-core machine; the
# bound leaves room for a loaded one.
QUEUE_TIMEOUT_S = 1500
POLL_S = 5
UNFINISHED = ("Queued", "Running")


def queue_env(store: str | None = None) -> dict:
    """The environment the recipe starts the queue in: the test's own, plus the
    store (when one is named) and a git identity for the experiments' commits
    (a CI runner may have none)."""
    env = pipeline_env()
    if store:
        env["MLFLOW_TRACKING_URI"] = store
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "t")
        env.setdefault(f"GIT_{role}_EMAIL", "t@t")
    return env


def dvc(arguments: list[str], project: Path, env: dict) -> str:
    result = subprocess.run(["dvc", *arguments], cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(arguments)} failed ({result.returncode}):\n{result.stdout}\n" \
                                   f"{result.stderr}"
    return result.stdout


def queue_rows(status: str) -> dict[str, str]:
    """Experiment name -> state from `dvc queue status`'s table (Task, Name, Created, Status)."""
    rows = {}
    for line in status.splitlines():
        match = re.match(r"^\s*[0-9a-f]{7,}\s+(\S+)\s+.*?\b(Queued|Running|Success|Failed)\b", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def wait_for_queue(project: Path, env: dict, expected: int) -> dict[str, str]:
    """Poll `dvc queue status` until `expected` tasks are done, at most QUEUE_TIMEOUT_S."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = dvc(["queue", "status"], project, env)
        rows = queue_rows(status)
        if len(rows) == expected and not set(rows.values()) & set(UNFINISHED):
            return rows
        if time.monotonic() >= deadline:
            running = [name for name, state in rows.items() if state == "Running"]
            if running:
                dvc(["queue", "kill", *running], project, env)
            pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_S}s:\n{status}")
        time.sleep(POLL_S)


def run_queue(project: Path, env: dict, expected: int, start: list[str] | None = None) -> dict[str, str]:
    """`dvc queue start` (or `start`, its arguments after `dvc`) in `env`, waited
    for until `expected` tasks are done, and the workers stopped whatever happens."""
    try:
        dvc(start or ["queue", "start"], project, env)
        return wait_for_queue(project, env, expected)
    finally:
        dvc(["queue", "stop"], project, env)


def experiment_revisions(project: Path, env: dict) -> dict[str, dict]:
    """Experiment name -> its revision's data (params, metrics) from `dvc exp show --json`."""
    shown = json.loads(dvc(["exp", "show", "--json"], project, env))
    return {revision["name"]: revision["data"] for commit in shown
            for experiment in commit.get("experiments") or [] for revision in experiment["revs"]}

