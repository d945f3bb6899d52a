import re
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np
import pytest

from pipeline.records.imaging import (
    MAX_ASPECT,
    MAX_PIXELS,
    MIN_SIDE,
    ImageError,
    check_film_shape,
    decode_to_gray8,
    image_dimensions,
    image_format,
    load_xray,
    make_square,
    png_significant_bits,
    resize_square,
)
from tests.conftest import PROJECT_ROOT


def encoded(image, ext=".png"):
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


def test_8bit_gray_passes_through():
    image = np.arange(64 * 32, dtype=np.uint16).reshape(32, 64).astype(np.uint8)
    assert np.array_equal(decode_to_gray8(encoded(image)), image)


def test_16bit_scaled_to_8bit():
    image = np.full((8, 8), 65535, dtype=np.uint16)
    image[0, 0] = 0
    out = decode_to_gray8(encoded(image))
    assert out.dtype == np.uint8 and out[1, 1] == 255 and out[0, 0] == 0


def test_rgb_and_rgba_to_gray():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., :] = (10, 200, 30)
    rgba = np.dstack([rgb, np.full((4, 4), 128, np.uint8)])
    expected = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(decode_to_gray8(encoded(rgb)), expected)
    assert np.array_equal(decode_to_gray8(encoded(rgba)), expected)


def test_jpeg_decodes():
    image = np.full((16, 16), 100, np.uint8)
    assert abs(int(decode_to_gray8(encoded(image, ".jpg"))[8, 8]) - 100) <= 2


def test_crop_and_pad_to_square():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert make_square(image, "crop").shape == (3, 3)
    padded = make_square(image, "pad")
    assert padded.shape == (4, 4) and padded[3].sum() == 0 and np.array_equal(padded[:3], image)
    assert resize_square(np.zeros((100, 60), np.uint8), 32).shape == (32, 32)


@pytest.mark.parametrize("data,problem", [(b"", "empty file"), (b"not an image at all", "not a readable")])
def test_bad_bytes_named(data, problem):
    with pytest.raises(ImageError, match=f"x.png: {problem}"):
        decode_to_gray8(data, "x.png")


def test_truncated_png(tmp_path):
    data = encoded(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        load_xray(path, 32)


def test_decompression_bomb_refused_before_decoding():
    data = bytearray(encoded(np.zeros((8, 8), np.uint8)))
    data[16:24] = (50_000).to_bytes(4, "big") + (50_000).to_bytes(4, "big")  # claims 2.5 gigapixels
    assert 50_000 * 50_000 > MAX_PIXELS
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_to_gray8(bytes(data), "bomb.png")


def test_missing_file_named(tmp_path):
    with pytest.raises(ImageError, match="nope.png: cannot read"):
        load_xray(tmp_path / "nope.png", 32)


# --- header checks before decoding -----------------------------------------

BOMB_SIDE = 32_000
BOMB_BYTES = 631


def jpeg_bomb() -> bytes:
    """631 bytes: a real JPEG header (OpenCV's, 3 components) whose SOF0 claims
    32000x32000x3 (3 GB decoded), then the first bytes of its scan data, cut off."""
    data = bytearray(encoded(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8), ".jpg"))
    assert data.count(b"\xff\xc0") == 1 and data.index(b"\xff\xda") < BOMB_BYTES - 20
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = BOMB_SIDE.to_bytes(2, "big") * 2  # height, width
    return bytes(data[:BOMB_BYTES])


def test_jpeg_bomb_named_png_refused_from_its_header():
    bomb = jpeg_bomb()
    assert len(bomb) == BOMB_BYTES and image_dimensions(bomb, "bomb.png") == (BOMB_SIDE, BOMB_SIDE)
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"^bomb.png: 32000x32000 pixels exceeds"):
        decode_to_gray8(bomb, "bomb.png")
    assert time.perf_counter() - started < 0.5


def test_jpeg_bomb_costs_no_memory(tmp_path):
    """OpenCV's own limit (2**30 pixels) would let this one through and allocate 3 GB."""
    path = tmp_path / "bomb.png"
    path.write_bytes(jpeg_bomb())
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking
    # process (here pytest, with TensorFlow loaded), VmHWM starts afresh.
    code = ("import sys\n"
            "from pipeline.records.imaging import ImageError, decode_to_gray8\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "try:\n    decode_to_gray8(data, sys.argv[1])\nexcept ImageError as error:\n    print(error)\n"
            "print(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')).split()[1])\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=True, timeout=60)
    message, peak_kib = done.stdout.strip().splitlines()
    assert "bomb.png" in message and "exceeds" in message
    assert int(peak_kib) < 500 * 1024, f"peak RSS {int(peak_kib) // 1024} MB"


def with_app1_segment(jpeg: bytes, payload: bytes) -> bytes:
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_jpeg_dimensions_walk_past_app_segments():
    image = np.zeros((30, 50), np.uint8)
    fake_frame = b"\xff\xc0\x00\x11\x08\x7f\xff\x7f\xff"  # an SOF-like run inside Exif data must not be read
    jpeg = with_app1_segment(encoded(image, ".jpg"), b"Exif\x00\x00" + fake_frame * 4)
    assert image_dimensions(jpeg, "a.jpg") == (50, 30)
    assert decode_to_gray8(jpeg, "a.jpg").shape == (30, 50)
    ok, progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and b"\xff\xc2" in progressive.tobytes()
    assert image_dimensions(progressive.tobytes(), "p.jpg") == (50, 30)  # SOF2


def test_format_from_bytes_not_extension():
    image = np.full((40, 60), 90, np.uint8)
    assert image_format(encoded(image, ".jpg"), "film.png") == "jpeg"
    assert abs(int(decode_to_gray8(encoded(image, ".jpg"), "film.png")[20, 30]) - 90) <= 2
    assert image_format(encoded(image), "film.jpg") == "png"
    bmp = encoded(image, ".bmp")
    with pytest.raises(ImageError, match="film.bmp: not a readable PNG, JPEG or DICOM image"):
        decode_to_gray8(bmp, "film.bmp")


@pytest.mark.parametrize("data,problem", [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "film.jpg: not a readable JPEG image \\(no frame header"),
    (b"\xff\xd8\xff\xe0\x00\x01", "impossible length 1"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDX", "film.jpg: not a readable PNG image \\(no IHDR"),
])
def test_broken_headers_named(data, problem):
    with pytest.raises(ImageError, match=problem):
        image_dimensions(data, "film.jpg")


# --- film shape -------------------------------------------------------------


@pytest.mark.parametrize("width,height,message", [
    (1, 1, "x.png: 1x1 pixels: the shorter side is below the minimum of 64 px (preprocess.min_side)"),
    (3000, 40, "x.png: 3000x40: aspect ratio 75.0 is beyond 2.0 (a chest film is near square; preprocess.max_aspect)"),
    (40, 100, "x.png: 40x100: aspect ratio 2.5 is beyond 2.0"),
])
def test_implausible_film_shapes_refused(width, height, message):
    with pytest.raises(ImageError, match=re.escape(message)):
        check_film_shape(width, height, "x.png", min_side=64, max_aspect=2.0)


def test_plausible_film_shapes_pass():
    check_film_shape(64, 64, "nih-64px.png", min_side=64, max_aspect=2.0)
    check_film_shape(3000, 2500, "portrait.dcm", MIN_SIDE, MAX_ASPECT)
    check_film_shape(1143, 966, "nih-widest.png", MIN_SIDE, MAX_ASPECT)
    check_film_shape(1024, 2048, "exactly-2.png", MIN_SIDE, 2.0)


def test_nih_64px_thumbnails_pass_the_default_shape(nih_64px):
    for path in sorted(nih_64px.glob("*/*/*.png"))[:20]:
        width, height = image_dimensions(path.read_bytes(), str(path))
        check_film_shape(width, height, str(path), MIN_SIDE, MAX_ASPECT)


# --- 16-bit scaling ----------------------------------------------------------


def with_sbit(png: bytes, bits: int) -> bytes:
    """The PNG with an sBIT chunk (significant bits of its grey channel) right after IHDR."""
    body = b"sBIT" + bytes([bits])
    chunk = (1).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    return png[:33] + chunk + png[33:]


def test_12bit_nih_film_in_16bit_png_keeps_its_grey_levels(nih_subset):
    path = sorted((nih_subset / "images_001" / "images").glob("*.png"))[0]
    original = decode_to_gray8(path.read_bytes(), str(path))
    twelve_bit = (original.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    plain = encoded(twelve_bit)
    declared = with_sbit(plain, 12)
    assert png_significant_bits(plain) is None and png_significant_bits(declared) == 12
    for data in (plain, declared):
        out = decode_to_gray8(data, path.name)
        assert out.dtype == np.uint8 and np.abs(out.astype(int) - original).max() <= 1


def test_sbit_decides_over_the_value_range():
    dark = np.full((8, 8), 900, np.uint16)  # a 12-bit film that happens to be dark
    assert decode_to_gray8(with_sbit(encoded(dark), 12))[0, 0] == round(900 * 255 / 4095)
    assert decode_to_gray8(encoded(dark))[0, 0] == round(900 * 255 / 1023)  # no sBIT: 10 bits hold it
    # A writer that followed the PNG spec scaled 12-bit values up to 16 bits: sBIT 12, values beyond 4095.
    shifted = np.full((8, 8), 4000 << 4, np.uint16)
    assert decode_to_gray8(with_sbit(encoded(shifted), 12))[0, 0] == round((4000 << 4) * 255 / 65535)


@pytest.mark.parametrize("top,bits", [(255, 8), (1023, 10), (1024, 12), (4095, 12), (16383, 14), (16384, 16)])
def test_16bit_without_sbit_uses_the_smallest_bit_depth_holding_the_maximum(top, bits):
    image = np.zeros((4, 4), np.uint16)
    image[0, 0] = top
    assert decode_to_gray8(encoded(image))[0, 0] == round(top * 255 / (2**bits - 1))


def test_16bit_rgb_to_grey_then_scaled():
    image = np.full((4, 4, 3), 4095, np.uint16)
    assert decode_to_gray8(encoded(image))[0, 0] == 255


def test_libpng_error_is_the_reason_not_a_stray_line(capfd):
    ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8))
    assert ok
    broken = bytearray(encoded.tobytes())
    broken[60:200] = b"x" * 140  # inside the IDAT stream: libpng prints its error on fd 2, OpenCV returns None
    with pytest.raises(ImageError) as error:
        decode_to_gray8(bytes(broken), "x.png")
    assert str(error.value) == ("x.png: not a readable PNG image (corrupt or truncated: libpng error: bad adaptive "
                                "filter value)")
    assert "libpng" not in capfd.readouterr().err


def test_files_are_refused_by_type_and_size_before_they_are_read(tmp_path):
    """A 50 GB sparse file and a 1 GB junk file cost a stat and 132 bytes, not their size in memory."""
    import os

    from pipeline.records.image_file import MAX_FILE_BYTES, read_image_bytes

    huge = tmp_path / "huge.png"
    with open(huge, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.truncate(50 * 10**9)
    with pytest.raises(ImageError, match=f"huge.png: 50000000000 bytes is over the limit of {MAX_FILE_BYTES}"):
        read_image_bytes(huge)
    junk = tmp_path / "junk.png"
    with open(junk, "wb") as handle:
        handle.truncate(10**9)
    with pytest.raises(ImageError, match="junk.png: not a readable PNG, JPEG or DICOM image"):
        read_image_bytes(junk)
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageError, match="pipe.png: is a named pipe \\(FIFO\\), not an image file"):
        read_image_bytes(tmp_path / "pipe.png")
    with pytest.raises(ImageError, match="is a directory, not an image file"):
        read_image_bytes(tmp_path)
    with pytest.raises(ImageError, match="empty file"):
        (tmp_path / "empty.png").touch()
        read_image_bytes(tmp_path / "empty.png")
