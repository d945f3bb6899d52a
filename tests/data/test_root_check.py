"""A named pipe in the data root: `make run` says so in one line before DVC hashes the root
(DVC's hashing would wait on it forever, with no output)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.conftest import PROJECT_ROOT


def test_a_fifo_in_the_data_root_is_named_before_dvc_hashes_it(tmp_path):
    root = tmp_path / "root"
    (root / "images_001" / "images").mkdir(parents=True)
    (root / "Data_Entry_2017.csv").write_text("Image Index\n")
    os.mkfifo(root / "images_001" / "images" / "00000001_000.png")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline.data.root_check", str(root)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 5
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"root_check: error: ingest.root {root}: {root}/images_001/images/00000001_000.png is a named pipe (FIFO): "
        f"DVC would wait on it forever when it hashes the data root; move it out of the root"]
    os.unlink(root / "images_001" / "images" / "00000001_000.png")
    assert subprocess.run([sys.executable, "-m", "pipeline.data.root_check", str(root)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60).returncode == 0


def test_make_run_checks_the_root_before_dvc_repro():
    recipe = subprocess.run(["make", "-n", "run", "STAMP="], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=60).stdout.splitlines()
    assert recipe.index("python -m pipeline.data.root_check") < recipe.index("dvc repro")
