"""An image file's bytes, the error every reader raises, and the pixel limit:
the part that both pipeline.records.imaging (PNG, JPEG) and
pipeline.records.dicom need, so neither imports the other at load time."""
from __future__ import annotations

from pathlib import Path

# Larger than any real radiograph (NIH's originals are at most ~4,000 px a
# side); guards against decompression bombs.
MAX_PIXELS = 100_000_000
DICOM_MAGIC_OFFSET = 128  # "DICM" follows the 128-byte preamble


class ImageError(ValueError):
    """A file that is not a usable image; the message says why."""


def check_pixel_count(width: int, height: int, name: str) -> None:
    """ImageError when width x height is over MAX_PIXELS (before anything is allocated)."""
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: {width}x{height} pixels exceeds the limit of {MAX_PIXELS} "
                         f"(decompression bomb?)")


def read_image_bytes(path: Path | str) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
