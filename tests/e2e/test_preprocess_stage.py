"""The preprocess stage under DVC: killed mid-way, rerun, and the worker count."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from pipeline.records.tfrecords import file_sha256
from tests.e2e.project import TINY, make_project, pipeline_env, run

pytestmark = pytest.mark.slow

# Enough work that preprocess is still writing shards when it is killed.
SLOW_PREPROCESS = {**TINY, "ingest.phantom.n_images": 240, "ingest.phantom.image_size": 512,
                   "preprocess.shard_size": 8, "preprocess.workers": 1}


def locked_md5(project, path: str) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["preprocess"]["outs"] if o["path"] == path)


def kill_when_shards_appear(project, minimum: int = 2, timeout: float = 120.0) -> bool:
    """Run `dvc repro preprocess`, kill -9 its whole process group once the
    staging directory holds `minimum` shards; True if it was killed mid-way."""
    process = subprocess.Popen(["dvc", "repro", "preprocess"], cwd=project, env=pipeline_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            staging = list((project / "data").glob(".tfrecords.*.tmp"))
            if staging and len(list(staging[0].glob("*.tfrecord"))) >= minimum:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.005)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return False


def test_kill_9_mid_preprocess_then_repro_gives_complete_shards(tmp_path):
    project = make_project(tmp_path / "project", SLOW_PREPROCESS)
    run(["dvc", "repro", "validate"], project)
    assert kill_when_shards_appear(project), "preprocess finished before it could be killed"
    # Nothing half-written is in the output's place, and DVC does not take the stage as done.
    assert not (project / "data" / "tfrecords").exists()
    assert list((project / "data").glob(".tfrecords.*.tmp")), "the killed run's staging is still there"
    assert "preprocess" in run(["dvc", "status", "preprocess"], project).stdout
    # Any stage clears it, also one that is not preprocess (a run-cache restore runs no preprocess).
    run(["python", "src/validate.py"], project)
    assert not list((project / "data").glob(".tfrecords.*")), "the killed run's staging left for the next stage"

    run(["dvc", "repro", "preprocess"], project)
    assert not list((project / "data").glob(".tfrecords.*")), "stale staging removed by the rerun"
    out = project / "data" / "tfrecords"
    index = json.loads((out / "index.json").read_text())
    manifest_rows = len((project / "data" / "validated" / "manifest.csv").read_text().splitlines()) - 1
    assert sum(s["records"] for s in index["shards"]) == manifest_rows == 240
    assert sorted(p.name for p in out.glob("*.tfrecord")) == sorted(s["file"] for s in index["shards"])
    for shard in index["shards"]:
        assert file_sha256(out / shard["file"]) == shard["sha256"]

    # The worker count is not a dependency: changing it reruns nothing...
    one_worker = locked_md5(project, "data/tfrecords")
    result = run(["dvc", "exp", "run", "-S", "preprocess.workers=2", "preprocess"], project)
    assert "Running stage 'preprocess'" not in result.stdout + result.stderr
    # ...and forcing the rerun with 2 workers gives byte-identical shards.
    result = run(["dvc", "exp", "run", "-f", "-s", "-S", "preprocess.workers=2", "preprocess"], project)
    assert "Running stage 'preprocess'" in result.stdout + result.stderr
    assert locked_md5(project, "data/tfrecords") == one_worker
    assert json.loads((out / "index.json").read_text()) == index
