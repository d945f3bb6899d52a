"""Fixtures of the end-to-end tests: one prepared tiny project per test session."""
from __future__ import annotations

from pathlib import Path

import pytest
from filelock import FileLock

from tests.e2e.project import TINY, commit_all, make_project, run


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory) -> Path:
    """The TINY project after `dvc repro preprocess`, committed: the phantom,
    manifest and shards in its DVC cache. Built once per test session, also
    when the suite runs in several pytest-xdist processes (under a lock, in
    their shared temp folder); tests copy it (copy_project) instead of
    rendering and preprocessing the phantom again. Read-only for them."""
    shared = tmp_path_factory.getbasetemp()
    if shared.name.startswith("popen-gw"):  # an xdist worker's own folder: build beside the others'
        shared = shared.parent
    project = shared / "prepared-tiny" / "project"
    with FileLock(str(shared / "prepared-tiny.lock")):
        if not (project.parent / "done").exists():
            project.parent.mkdir(exist_ok=True)
            make_project(project, TINY)
            run(["dvc", "repro", "preprocess"], project)
            commit_all(project, "data stages")
            (project.parent / "done").touch()
    return project
