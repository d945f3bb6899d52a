"""The data root checked for what would hang DVC, before `dvc repro` hashes it.

The ingest stage depends on ingest.root, so DVC reads every file under it to
hash it before any stage of ours runs. A named pipe there makes that read
wait forever for a writer that never comes (and a device never ends), with
no output. `make run` runs this first: it names each such entry in one line
and exits 1. Only file types are checked (one stat per entry, no file opened).

    python -m pipeline.data.root_check [ROOT]     # default: params.yaml's ingest.root
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.core.file_kind import file_kind, walk_real_folders

SHOWN = 5


def special_files(root: Path) -> list[tuple[Path, str]]:
    """(path, kind) of every entry under root that is neither a folder nor a
    regular file; links are followed as DVC follows them, each real folder once."""
    found: list[tuple[Path, str]] = []
    for folder, names in walk_real_folders(root):
        for name in names:
            path = folder / name
            try:
                kind = file_kind(os.stat(path).st_mode)
            except OSError:  # a dangling link: DVC skips it, ingest reports it
                continue
            if kind is not None:
                found.append((path, kind))
    return found


def check_root(root: Path) -> str | None:
    """None when DVC can hash root; else the one line that says what to move."""
    if not root.is_dir():
        return None  # ingest names a missing root itself
    found = special_files(root)
    if not found:
        return None
    listed = ", ".join(f"{path} is {kind}" for path, kind in found[:SHOWN])
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return (f"ingest.root {root}: {listed}{more}: DVC would wait on it forever when it hashes the data root; "
            f"move it out of the root")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        root = Path(argv[0])
    else:
        from pipeline.core.config import ConfigError
        from pipeline.core.settings import load_settings

        try:  # params.yaml checked here too: `make run` stops on a bad param before DVC starts
            root = Path(load_settings().ingest.root)
        except ConfigError as exc:
            print(f"root_check: error: {exc}", file=sys.stderr)
            return 1
    line = check_root(root)
    if line:
        print(f"root_check: error: {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
