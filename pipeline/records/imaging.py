"""Image conventions, in one place: how any X-ray file becomes model input.

The convention every stage shares (train, evaluate, explain, predict):
  1. the format is read from the file's first bytes, never its extension: PNG,
     JPEG or DICOM (pipeline.records.dicom); anything else is refused;
  2. the width and height are read from the header (PNG IHDR, JPEG SOF,
     DICOM Rows/Columns) and a file over MAX_PIXELS is refused before any
     decoding; preprocess also refuses films of implausible shape there
     (check_film_shape: shorter side below min_side, aspect beyond max_aspect);
  3. to 8-bit single channel: colour by luma, alpha dropped, then
     - 8-bit samples as they are;
     - 16-bit PNG with an sBIT chunk of b significant bits whose values fit in
       b bits: value * 255 / (2**b - 1) (a 12-bit detector stored raw);
     - any other 16-bit image: b is the smallest of 8, 10, 12,
       14, 16 bits that holds the image's maximum, then the same formula; so a
       12-bit film stored in a 16-bit PNG (values 0..4095) keeps its contrast
       instead of coming out nearly black, and a full-range 16-bit file is
       scaled by 255/65535 as before;
     - DICOM: Modality LUT (rescale), then the VOI LUT or window, else the
       range BitsStored can hold, MONOCHROME1 inverted (pipeline.records.dicom);
  4. non-square images centre-cropped (or padded) to a square;
  5. resized to `image_size` with area interpolation;
  6. the model receives float32 grey values 0..255, shape (size, size, 1),
     and normalises them itself (see pipeline.model.architectures), so a registered model
     needs nothing but this file's steps.
Every failure is an ImageError whose message names the file, so one bad image
never stops a batch. This module imports no TensorFlow, so worker processes
stay light; pydicom is imported only when a DICOM file arrives.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.core.quiet import native_stderr_captured
from pipeline.records.codestream import jpeg_dimensions
from pipeline.records.image_file import (  # re-exported: the names every stage imports from here
    MAX_PIXELS,  # noqa: F401
    PNG_SIGNATURE,
    ImageError,
    check_pixel_count,
    not_an_image,
    read_image_bytes,
    signature_format,
)

# Film shape defaults (params preprocess.min_side, preprocess.max_aspect). The
# shorter side: 32 px keeps NIH's 64 px thumbnails and small test films while
# refusing 1x1 placeholders and icons. The aspect: NIH's 112,120 originals reach
# 1.84 (landscape or portrait film); a strip beyond 2 is not a chest film.
MIN_SIDE = 32
MAX_ASPECT = 2.0

BIT_DEPTHS = (8, 10, 12, 14, 16)
# Colour channels per PNG colour type; sBIT has one byte per channel, alpha last.
PNG_COLOUR_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}
# What OpenCV's decoder can raise on hostile input besides returning None.
DECODER_ERRORS = (cv2.error, ValueError, MemoryError, OverflowError)



def image_format(data: bytes, name: str = "image") -> str:
    """"png", "jpeg" or "dicom", from the first bytes (a .dcm name admits a
    DICOM without its 128-byte preamble); ImageError for anything else."""
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    kind = signature_format(data, name)
    if kind is not None:
        return kind
    raise not_an_image(name)


def png_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk without decoding, else None."""
    if len(data) >= 24 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def image_dimensions(data: bytes, name: str = "image") -> tuple[int, int]:
    """(width, height) from the header of a PNG, JPEG or DICOM file, without
    decoding its pixels; ImageError when the header cannot be read."""
    kind = image_format(data, name)
    if kind == "png":
        size = png_dimensions(data)
        if size is None:
            raise ImageError(f"{name}: not a readable PNG image (no IHDR header: corrupt or truncated)")
    elif kind == "jpeg":
        size = jpeg_dimensions(data, name)
    else:
        size = _dicom_module(name).dicom_dimensions(data, name)
    if size[0] == 0 or size[1] == 0:
        raise ImageError(f"{name}: header gives {size[0]}x{size[1]} pixels")
    return size





def check_film_shape(width: int, height: int, name: str, min_side: int = MIN_SIDE,
                     max_aspect: float = MAX_ASPECT) -> None:
    """ImageError when a film's shape is implausible for a chest radiograph:
    far from square (a strip, a banner), or too small to hold a chest."""
    aspect = max(width, height) / max(min(width, height), 1)
    if aspect > max_aspect:
        raise ImageError(f"{name}: {width}x{height}: aspect ratio {aspect:.1f} is beyond {max_aspect} "
                         f"(a chest film is near square; preprocess.max_aspect)")
    if min(width, height) < min_side:
        raise ImageError(f"{name}: {width}x{height} pixels: the shorter side is below the minimum of "
                         f"{min_side} px (preprocess.min_side)")


def png_significant_bits(data: bytes) -> int | None:
    """The sBIT chunk's significant bits of a PNG's colour channels (the
    largest, alpha excluded), or None without one; chunks are walked up to
    the first IDAT, where the PNG spec requires sBIT to come before."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    channels = PNG_COLOUR_CHANNELS.get(data[25], 1)
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        if kind in (b"IDAT", b"IEND"):
            return None
        if kind == b"sBIT":
            bits = data[position + 8:position + 8 + min(length, channels)]
            return max(bits) if bits else None
        position += 12 + length
    return None


def significant_bits(image: np.ndarray, declared: int | None) -> int:
    """How many low bits of a 16-bit grey image carry the grey range (rule in the module docstring)."""
    top = int(image.max()) if image.size else 0
    if declared is not None and 1 <= declared <= 16 and top < 2**declared:
        return declared
    return next(bits for bits in BIT_DEPTHS if top < 2**bits)


def scale_to_8bit(image: np.ndarray, bits: int) -> np.ndarray:
    """uint16 -> uint8 by value * 255 / (2**bits - 1), through a lookup table
    (one byte per pixel out, no float copy of a large film)."""
    top = 2**bits - 1
    lut = np.round(np.minimum(np.arange(65536, dtype=np.float64), top) * (255.0 / top)).astype(np.uint8)
    return lut[image]


def _dicom_module(name: str):
    # Imported on the first DICOM only: PNG workers (and a served model without
    # pydicom installed) never pay for it.
    try:
        from pipeline.records import dicom
    except ImportError as exc:
        raise ImageError(f"{name}: is a DICOM file, and reading DICOM needs pydicom and pylibjpeg: {exc}") from exc
    return dicom


def to_gray(image: np.ndarray, name: str) -> np.ndarray:
    """A decoded image (grey, BGR or BGRA, 8 or 16-bit) to one channel of the same type."""
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if channels == 1:
        return image[:, :, 0]
    raise ImageError(f"{name}: unsupported channel count {channels}")


def decode_quietly(data: bytes) -> tuple[np.ndarray | None, list[str]]:
    """cv2.imdecode with what libpng and libjpeg print to file descriptor 2
    ("libpng error: bad adaptive filter value") taken as text, warnings dropped:
    the reason of the ImageError that follows, instead of a stray line beside our message."""
    with native_stderr_captured() as native:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    return image, [line.strip() for line in native if line.strip() and "warning" not in line.lower()]


def decode_to_gray8(data: bytes, name: str = "image") -> np.ndarray:
    """Decode PNG, JPEG or DICOM bytes to a 2-D uint8 array; the size is
    checked from the header first, and every decoder failure is an ImageError."""
    kind = image_format(data, name)
    if kind == "dicom":
        return _dicom_module(name).dicom_to_gray8(data, name)
    width, height = image_dimensions(data, name)
    check_pixel_count(width, height, name)
    try:
        image, native = decode_quietly(data)
    except DECODER_ERRORS as exc:
        detail = " ".join(str(exc).split()) or "no detail"  # cv2.error spans several lines
        raise ImageError(f"{name}: not a readable {kind.upper()} image ({type(exc).__name__}: {detail})") from exc
    if image is None:
        detail = "".join(f": {line}" for line in native)
        raise ImageError(f"{name}: not a readable {kind.upper()} image (corrupt or truncated{detail})")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{name}: unsupported pixel type {image.dtype}")
    gray = to_gray(image, name)
    if gray.dtype == np.uint16:
        declared = png_significant_bits(data) if kind == "png" else None
        gray = scale_to_8bit(gray, significant_bits(gray, declared))
    return np.ascontiguousarray(gray)


def make_square(image: np.ndarray, fit: str = "crop") -> np.ndarray:
    """Centre-crop ("crop") or zero-pad ("pad") a 2-D image to a square."""
    height, width = image.shape[:2]
    if height == width:
        return image
    if fit == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return image[top : top + side, left : left + side]
    if fit == "pad":
        side = max(height, width)
        out = np.zeros((side, side), dtype=image.dtype)
        top, left = (side - height) // 2, (side - width) // 2
        out[top : top + height, left : left + width] = image
        return out
    raise ValueError(f"fit must be 'crop' or 'pad', got {fit!r}")


def resize_square(image: np.ndarray, size: int, fit: str = "crop") -> np.ndarray:
    """Square, then area-interpolated resize to size x size (uint8 in, uint8 out)."""
    square = make_square(image, fit)
    if square.shape[0] == size:
        return square
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)





def load_xray(path: Path | str, size: int, fit: str = "crop") -> np.ndarray:
    """Read a PNG, JPEG or DICOM file and apply the whole convention: (size, size) uint8."""
    return resize_square(decode_to_gray8(read_image_bytes(path), str(path)), size, fit)


def encode_image(image: np.ndarray, encoding: str = "png", jpeg_quality: int = 95) -> bytes:
    """Encode a uint8 2-D image as PNG (lossless) or JPEG."""
    if encoding == "png":
        # The "up" filter: on NIH images at 320px, 8% smaller records and 20%
        # faster decoding in the input pipeline than OpenCV's default filter.
        ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    elif encoding == "jpeg":
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise ValueError(f"encoding must be 'png' or 'jpeg', got {encoding!r}")
    if not ok:
        raise ImageError(f"could not encode image as {encoding}")
    return buffer.tobytes()
