"""An image file's bytes, the error every reader raises, and the limits:
the part that both pipeline.records.imaging (PNG, JPEG) and
pipeline.records.dicom need, so neither imports the other at load time.

A file is read defensively, because a data root or a folder handed to
`cxr predict` holds whatever a user put there: what is not a regular file
(a named pipe would block the reader forever, a device would never end) is
refused from its type before it is opened for reading; the file is opened
without blocking and checked again on the open descriptor (a path swapped
in between is caught); the first bytes must carry a PNG, JPEG or DICOM
signature before the rest is read; and the rest is read in bounded chunks,
up to MAX_FILE_BYTES (a 50 GB sparse file costs one stat, not a MemoryError).
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.file_kind import file_kind

# Larger than any real radiograph (NIH's originals are at most ~4,000 px a
# side); guards against decompression bombs.
MAX_PIXELS = 100_000_000
DICOM_MAGIC_OFFSET = 128  # "DICM" follows the 128-byte preamble
# The largest file read: an uncompressed 16-bit film of MAX_PIXELS is 200 MB,
# plus room for a DICOM header. Beyond this no film can be within MAX_PIXELS.
MAX_FILE_BYTES = 2 * MAX_PIXELS + (16 << 20)
READ_CHUNK_BYTES = 1 << 20
# Enough for every signature imaging.image_format looks for (DICOM's sits at byte 128).
SIGNATURE_BYTES = DICOM_MAGIC_OFFSET + 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"


class ImageError(ValueError):
    """A file that is not a usable image; the message says why."""


def check_pixel_count(width: int, height: int, name: str) -> None:
    """ImageError when width x height is over MAX_PIXELS (before anything is allocated)."""
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: {width}x{height} pixels exceeds the limit of {MAX_PIXELS} "
                         f"(decompression bomb?)")


def refuse_non_regular(info: os.stat_result, name: Path | str) -> None:
    kind = file_kind(info.st_mode)
    if kind is not None:
        raise ImageError(f"{name}: is {kind}, not an image file")


def check_regular_file(path: Path | str) -> os.stat_result:
    """The file's stat (symlinks followed); ImageError naming it when it is missing,
    unreadable or not a regular file. Never opens it, so a FIFO cannot block."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    refuse_non_regular(info, path)
    return info


def signature_format(head: bytes, name: str) -> str | None:
    """"png", "jpeg" or "dicom" from a file's first bytes, None for anything else
    (a .dcm name admits a DICOM without its 128-byte preamble)."""
    if head[:8] == PNG_SIGNATURE:
        return "png"
    if head[:3] == JPEG_SOI:
        return "jpeg"
    if head[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM" or name.lower().endswith(".dcm"):
        return "dicom"
    return None


def not_an_image(name: str) -> ImageError:
    # The bytes are not quoted: a link to a private file must not leak its first line into a report.
    return ImageError(f"{name}: not a readable PNG, JPEG or DICOM image (its first bytes are none of their "
                      f"signatures)")


def empty_file(name: str) -> ImageError:
    return ImageError(f"{name}: empty file (0 bytes)")


def over_byte_limit(name: str, size: int, max_bytes: int) -> ImageError:
    return ImageError(f"{name}: {size} bytes is over the limit of {max_bytes} for one film "
                      f"(no film within {MAX_PIXELS} pixels is this large)")


def check_film_bytes(data: bytes, name: str, max_bytes: int = MAX_FILE_BYTES) -> None:
    """The checks read_image_bytes makes of a file, made of bytes that arrived
    another way (a film posted to the model server): not empty, a PNG, JPEG or
    DICOM signature, at most max_bytes; ImageError naming the film otherwise."""
    if not data:
        raise empty_file(name)
    if signature_format(bytes(data[:SIGNATURE_BYTES]), name) is None:
        raise not_an_image(name)
    if len(data) > max_bytes:
        raise over_byte_limit(name, len(data), max_bytes)


def read_image_bytes(path: Path | str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """A film's bytes, read as the module docstring says; ImageError naming the file otherwise."""
    path = Path(path)
    name = str(path)
    check_regular_file(path)
    try:
        # O_NONBLOCK: a FIFO swapped in after the stat opens at once instead of waiting for a writer
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        try:
            info = os.fstat(descriptor)
            refuse_non_regular(info, name)
            if info.st_size == 0:
                raise empty_file(name)
            head = handle.read(SIGNATURE_BYTES)
            if signature_format(head, name) is None:
                raise not_an_image(name)
            if info.st_size > max_bytes:
                raise over_byte_limit(name, info.st_size, max_bytes)
            chunks = [head]
            total = len(head)
            while chunk := handle.read(READ_CHUNK_BYTES):
                total += len(chunk)
                if total > max_bytes:  # the file grew while it was read
                    raise ImageError(f"{name}: over the limit of {max_bytes} bytes for one film")
                chunks.append(chunk)
        except OSError as exc:
            raise ImageError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    return b"".join(chunks)
