import cv2
import numpy as np
import pytest

from pipeline.records.imaging import (
    MAX_PIXELS,
    ImageError,
    decode_to_gray8,
    load_xray,
    make_square,
    resize_square,
)


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
