"""A file's md5, as DVC records it in dvc.lock and as Keras names its weight
files: read in chunks, so a weights file of hundreds of MB is never whole in memory."""
from __future__ import annotations

import hashlib
from pathlib import Path


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
