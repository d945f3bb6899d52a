import os
from pathlib import Path

import pytest

from pipeline.core.atomic import atomic_dir, atomic_path


def test_atomic_path_failure_leaves_old_content(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_atomic_dir_replaces_whole_directory(tmp_path):
    target = tmp_path / "shards"
    target.mkdir()
    (target / "stale").write_text("x")
    with atomic_dir(target) as staging:
        (staging / "new").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_atomic_dir_failure_keeps_nothing_half_written(tmp_path):
    target = tmp_path / "shards"
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "part").write_text("y")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "shards"
    # A real writer process that dies mid-write (kill -9 leaves no chance to clean up).
    code = (
        "import os, signal, sys; from pipeline.core.atomic import atomic_dir\n"
        f"with atomic_dir({str(target)!r}) as staging:\n"
        "    (staging / 'part-00000').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == -9
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".shards.") and not target.exists()
    live = tmp_path / f".shards.{os.getpid()}.abcd.tmp"  # a live writer's staging is left alone
    live.mkdir()
    with atomic_dir(target) as staging:
        (staging / "part-00000").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["shards", live.name])
    assert (target / "part-00000").read_text() == "whole"


def test_atomic_path_keeps_the_suffix_and_cleans_a_dead_writers_file(tmp_path):
    target = tmp_path / "model.keras"
    dead = tmp_path / ".model.keras.999999999.x.tmp.keras"
    dead.write_text("half")
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".keras" and tmp.name.startswith(f".model.keras.{os.getpid()}.")
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
