import pytest

from pipeline.atomic import atomic_dir, atomic_path


def test_atomic_path_failure_leaves_old_content(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
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
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as staging:
            (staging / "part").write_text("y")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
