"""What a path is when it is not a regular file: named once, for every reader
that must refuse it by type before opening it (a named pipe blocks a reader
forever, a device never ends); and the walk over a user's folder that both
the folder source and the data-root check take."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISDIR, "a directory"))


def file_kind(mode: int) -> str | None:
    """What a non-regular file is ("a named pipe (FIFO)", ...), None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in FILE_KINDS if test(mode)), "not a regular file")


def walk_real_folders(root: Path | str) -> Iterator[tuple[Path, list[str]]]:
    """(folder, its entry names sorted) for root and every folder under it, links
    followed as DVC follows them, each real folder once (so a link loop ends), in
    sorted order. Names are of what os.walk takes for files: anything not a folder."""
    seen: set[str] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders.sort()
        yield Path(folder), sorted(names)
