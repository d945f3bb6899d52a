"""Atomic writes: a failed stage never leaves a half-written output behind.

Everything is written to a temporary sibling (`.{name}.{pid}.*`) and moved
into place with one rename, so a later stage (or DVC) sees either the old
output or the whole new one. A writer killed mid-way leaves only such a
temporary, which the next write of the same target removes.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    # mkstemp/mkdtemp create private (0600/0700) paths; outputs get the mode
    # a plain open()/mkdir() would give them.
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Linux: a killed process not yet reaped (its parent died too, and a
    container's init may never reap it) still answers kill(pid, 0)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].startswith("Z")


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete temporaries of `target` left by a killed process (kill -9, power loss).

    Every temporary name carries its writer's pid; only those whose process
    is gone are removed, so a concurrent writer keeps its own.
    """
    removed = []
    for sibling in target.parent.glob(f".{target.name}.*"):
        parts = sibling.name[len(target.name) + 2 :].split(".")
        parts[0] = parts[0].removeprefix("old-")
        if not parts[0].isdigit() or _pid_alive(int(parts[0])):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto target.

    The temporary name keeps target's suffix, for writers (Keras) that insist on one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=f".tmp{target.suffix}",
                                dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp_dir, 0o777 & ~_umask())
    try:
        yield tmp_dir
        if target.exists():
            # Move the old one aside first so the swap leaves no window with neither.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp_dir, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, target)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text_atomic(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_csv_atomic(frame, target: Path | str, **to_csv) -> None:
    """A pandas DataFrame as CSV (no index, \\n line ends), written atomically;
    `to_csv` are further DataFrame.to_csv options (float_format, ...)."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n", **to_csv)


def write_json_atomic(target: Path | str, data: Any) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
