"""System faults as one line with their true cause: a full disk, memory, a dead worker.

A full disk surfaces in many costumes: an OSError with errno 28 from our own
writes, TensorFlow's ResourceExhaustedError ("No space left on device")
from a TFRecord or checkpoint write, SQLite's "database or disk is full"
under an SQLAlchemy error from MLflow (whose first line may instead be about
an autoflush). Each is recognised anywhere in the exception's chain, and
the line names the disk and how much is free there, so a user frees space
instead of debugging the tracking store.
"""
from __future__ import annotations

import errno
import re
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# TensorFlow's file errors name the file first: "data/x.tfrecord; No space left on device".
TENSORFLOW_PATH = re.compile(r"^(?P<path>[^;\n]+); No space left on device")
DISK_FULL_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The exception's first non-empty line (its type's name when it has none),
    cut to `limit` characters with "..." when longer."""
    line = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return line[:limit] + "..." if limit is not None and len(line) > limit else line


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """exc, then its causes and contexts (each once)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full_error(exc: BaseException) -> BaseException | None:
    """The error in exc's chain that says the disk is full, or None."""
    for link in exception_chain(exc):
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return link
        if any(text in str(link).lower() for text in DISK_FULL_TEXTS):
            return link
    return None


def human_bytes(count: float) -> str:
    if count < 1000:
        return f"{count:.0f} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        count /= 1000
        if count < 1000 or unit == "TB":
            break
    return f"{count:.1f} {unit}"


def sqlite_store_folder() -> Path | None:
    """The folder of MLflow's SQLite store, where MLflow is loaded and uses one: SQLite's
    "database or disk is full" names no file."""
    mlflow = sys.modules.get("mlflow")
    uri = mlflow.get_tracking_uri() if mlflow is not None else ""
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None


def disk_full_line(exc: BaseException, where: Path | str = ".") -> str | None:
    """"no space left on device writing <file>: <n> free on the disk holding <folder>; ..."
    for the path the error names, else `where` (the project: every output of a stage
    lives under it); None when exc's chain does not say the disk is full."""
    error = disk_full_error(exc)
    if error is None:
        return None
    named = getattr(error, "filename", None)
    if not named and (match := TENSORFLOW_PATH.match(str(error))):
        named = match.group("path")
    if not named and "database or disk is full" in str(error).lower():
        where = sqlite_store_folder() or where
    path = Path(named) if named else Path(where)
    probe = next((p for p in (path, *path.absolute().parents) if p.is_dir()), Path("."))
    free = human_bytes(shutil.disk_usage(probe).free)
    writing = f" writing {named}" if named else ""
    return (f"no space left on device{writing}: {free} free on the disk holding {probe.absolute()}; "
            f"free some space and rerun")


def system_fault_line(exc: BaseException, where: Path | str = ".") -> str | None:
    """One line for a full disk, an out-of-memory error or a dead worker pool; None for anything else."""
    disk_full = disk_full_line(exc, where)
    if disk_full is not None:
        return disk_full
    for link in exception_chain(exc):
        if isinstance(link, MemoryError):
            detail = f" ({link})" if str(link) else ""
            return (f"out of memory{detail}: lower the batch size or the workers in params.yaml, or use a "
                    f"machine with more memory")
        if isinstance(link, BrokenProcessPool):
            return (f"a worker process died ({link}); the kernel's out-of-memory killer is the usual cause: "
                    f"lower the workers in params.yaml")
    return None
