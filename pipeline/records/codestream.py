"""Frame sizes read from compressed codestreams' headers, without decoding:
what a decoder would allocate, known before it runs. Used for JPEG files
(pipeline.records.imaging) and for the JPEG and JPEG 2000 codestreams
embedded in compressed DICOMs (pipeline.records.dicom)."""
from __future__ import annotations

from pipeline.records.image_file import ImageError

# SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
# F7 is JPEG-LS's SOF55 (a DICOM's embedded JPEG-LS codestream; pipeline.records.dicom).
JPEG_FRAME_MARKERS = (frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {0xF7}
# Markers without a length field: TEM and the restart markers.
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
JPEG_END_OF_HEADER = frozenset({0xD9, 0xDA})  # EOI, SOS: no frame header after these
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # a JPEG 2000 codestream's SOC marker then its SIZ segment
# Where a JPEG 2000 codestream may start: after a JP2 file's boxes, which precede it by a few hundred bytes.
J2K_SEARCH_BYTES = 4096


def jpeg_dimensions(data: bytes, name: str = "image") -> tuple[int, int]:
    """(width, height) from a JPEG's frame header (SOF0..SOF15), walking the
    segments before it (APPn, DQT, DHT, ...) without decoding."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ImageError(f"{name}: JPEG header broken at byte {position} (no segment marker)")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker in JPEG_END_OF_HEADER:
            break
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if length < 2:
            raise ImageError(f"{name}: JPEG segment at byte {position} has an impossible length {length}")
        if marker in JPEG_FRAME_MARKERS:
            if length < 8 or position + 9 > len(data):
                break
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            if width == 0 or height == 0:
                raise ImageError(f"{name}: JPEG frame header gives {width}x{height} pixels (a height set by a "
                                 f"later DNL marker is not supported)")
            return width, height
        position += 2 + length
    raise ImageError(f"{name}: not a readable JPEG image (no frame header: corrupt or truncated)")


def j2k_dimensions(codestream: bytes, name: str) -> tuple[int, int]:
    """(width, height) from a JPEG 2000 codestream's SIZ segment (Xsiz - XOsiz, Ysiz - YOsiz)."""
    start = codestream.find(J2K_SOC_SIZ, 0, J2K_SEARCH_BYTES)
    if start < 0 or start + 24 > len(codestream):
        raise ImageError(f"{name}: the DICOM's JPEG 2000 codestream has no SIZ header (corrupt or truncated)")
    width, height, x_offset, y_offset = (int.from_bytes(codestream[start + 8 + 4 * i:start + 12 + 4 * i], "big")
                                         for i in range(4))
    return width - x_offset, height - y_offset
