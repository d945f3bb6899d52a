"""System faults as one line: a full disk in each of its costumes, memory, a dead worker."""
from __future__ import annotations

import errno
import sqlite3
from concurrent.futures.process import BrokenProcessPool

from pipeline.core.faults import disk_full_error, human_bytes, system_fault_line


def raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as cause:
            raise outer from cause
    except BaseException as chained:
        return chained


def test_a_full_disk_is_found_anywhere_in_the_chain(tmp_path):
    own = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.csv"))
    assert system_fault_line(own).startswith(f"no space left on device writing {tmp_path / 'x.csv'}: ")
    tensorflow_like = RuntimeError(f"{tmp_path}/a.tfrecord; No space left on device")
    assert f"writing {tmp_path}/a.tfrecord: " in system_fault_line(tensorflow_like)
    store = raised_from(RuntimeError("(raised as a result of Query-invoked autoflush)"),
                        sqlite3.OperationalError("database or disk is full"))
    assert disk_full_error(store) is store.__cause__
    line = system_fault_line(store, tmp_path)  # SQLite names no file: MLflow's store folder, if loaded, else tmp_path
    assert line.startswith("no space left on device: ") and " free on the disk holding " in line
    assert system_fault_line(ValueError("bad param")) is None


def test_memory_and_dead_workers_say_so():
    assert system_fault_line(MemoryError()).startswith("out of memory: lower the batch size or the workers")
    assert system_fault_line(raised_from(RuntimeError("x"), BrokenProcessPool("gone"))).startswith(
        "a worker process died (gone)")


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 999, 1500, 2_500_000, 68_000_000_000)] == [
        "0 bytes", "999 bytes", "1.5 KB", "2.5 MB", "68.0 GB"]
