"""DICOM films as scanners and PACS exports write them: real NIH pixels written
as DICOM (uncompressed, MONOCHROME1, 12-bit with rescale and window, VOI LUT,
JPEG Lossless, JPEG 2000, RLE, JPEG Baseline) must give the PNG's image."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from pipeline.records.dicom import LATERAL_VIEWS, dicom_to_gray8, read_dicom_patient
from pipeline.records.film import prepare_image
from pipeline.records.imaging import (
    ImageError,
    decode_to_gray8,
    image_dimensions,
    load_xray,
)
from tests.conftest import NIH_SUBSET, require_shared

DIGITAL_XRAY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
FILMS = 3
SIZE = 320


@pytest.fixture(scope="module")
def nih_films() -> list:
    """(png path, its 8-bit grey pixels) of the first real NIH films in ../shared."""
    images = NIH_SUBSET / "images_001" / "images"
    require_shared(images, "real NIH subset images")
    paths = sorted(images.glob("*.png"))[:FILMS]
    return [(path, decode_to_gray8(path.read_bytes(), str(path))) for path in paths]


def film_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 8, **elements) -> Dataset:
    """A DX "for presentation" dataset holding `pixels` uncompressed, plus `elements`."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.SOPClassUID = DIGITAL_XRAY_FOR_PRESENTATION
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.Modality = "DX"
    dataset.set_pixel_data(pixels, photometric, bits_stored)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    return dataset


def encapsulated(dataset: Dataset, frame: bytes, transfer_syntax: str) -> Dataset:
    """dataset with its pixels replaced by one compressed frame (for syntaxes pydicom cannot encode)."""
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    return dataset


def dicom_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def huffman_codes(counts: list[int], symbols: list[int]) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length) of a JPEG Huffman table given as DHT counts (ITU T.81 Annex C)."""
    codes, code, position = {}, 0, 0
    for length, count in enumerate(counts, start=1):
        for _ in range(count):
            codes[symbols[position]] = (code, length)
            code += 1
            position += 1
        code <<= 1
    return codes


# T.81 Table K.3 (luminance DC): difference categories 0..11, enough for 8-bit samples.
DC_COUNTS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
DC_SYMBOLS = list(range(12))


def jpeg_lossless(pixels: np.ndarray) -> bytes:
    """8-bit grey JPEG Lossless, process 14, selection value 1 (left predictor):
    the DICOM transfer syntax 1.2.840.10008.1.2.4.70. Neither pydicom nor the
    pylibjpeg plugins encode it, so it is written here (ITU T.81 Annex H)."""
    height, width = pixels.shape
    values = pixels.astype(np.int32)
    predicted = np.empty_like(values)
    predicted[:, 1:] = values[:, :-1]  # left neighbour
    predicted[1:, 0] = values[:-1, 0]  # first column: the one above
    predicted[0, 0] = 128  # first sample: 2**(P - 1)
    difference = (values - predicted).ravel()
    category = np.where(difference == 0, 0, np.floor(np.log2(np.abs(difference) + 0.5)).astype(np.int32) + 1)
    extra = np.where(difference < 0, difference + (1 << category) - 1, difference)
    table = huffman_codes(DC_COUNTS, DC_SYMBOLS)
    code = np.array([table[c][0] for c in range(12)], np.int64)[category]
    code_length = np.array([table[c][1] for c in range(12)], np.int32)[category]
    word = (code << category) | extra
    lengths = code_length + category
    owner = np.repeat(np.arange(len(word)), lengths)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    bits = ((word[owner] >> (lengths[owner] - 1 - offset)) & 1).astype(np.uint8)
    bits = np.concatenate([bits, np.ones((-len(bits)) % 8, np.uint8)])  # pad the last byte with 1s
    scan = np.packbits(bits).tobytes().replace(b"\xff", b"\xff\x00")
    frame = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big")
    frame += bytes([1, 1, 0x11, 0])
    huffman = b"\xff\xc4" + (3 + 16 + len(DC_SYMBOLS)).to_bytes(2, "big") + bytes([0, *DC_COUNTS, *DC_SYMBOLS])
    start_of_scan = b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + frame + huffman + start_of_scan + scan + b"\xff\xd9"


def twelve_bit_stored(pixels: np.ndarray) -> np.ndarray:
    """A 12-bit detector's values for the 8-bit film: v * 16 + 8 (0..4088)."""
    return pixels.astype(np.uint16) * 16 + 8


def twelve_bit_rescaled_windowed(pixels: np.ndarray) -> Dataset:
    """Stored v * 8 + 1000; the Modality LUT (stored / 8 - 125) gives v back, and
    the window's LINEAR function maps 0..255 onto the whole output range. The
    offset matters: without the window, v would come out at (v + 125) / 2."""
    stored = pixels.astype(np.uint16) * 8 + 1000
    return film_dataset(stored, bits_stored=12, RescaleSlope="0.125", RescaleIntercept="-125", RescaleType="US",
                        WindowCenter="128", WindowWidth="256")


def twelve_bit_voi_lut(pixels: np.ndarray) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.LUTData = [min(value // 16, 255) for value in range(4096)]
    item["LUTData"].VR = "US"
    return film_dataset(twelve_bit_stored(pixels), bits_stored=12, VOILUTSequence=Sequence([item]))


def compressed(transfer_syntax: str):
    def build(pixels: np.ndarray) -> Dataset:
        dataset = film_dataset(pixels)
        dataset.compress(transfer_syntax)
        return dataset
    return build


def jpeg_baseline(pixels: np.ndarray) -> Dataset:
    ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return encapsulated(film_dataset(pixels), jpeg.tobytes(), JPEGBaseline8Bit)


# name -> (how the film is written, largest mean |difference| at 320 px allowed)
FILM_WRITERS = {
    "monochrome2_8bit": (lambda pixels: film_dataset(pixels), 1.0),
    "monochrome1_inverted": (lambda pixels: film_dataset(255 - pixels, "MONOCHROME1"), 1.0),
    "12bit_rescale_window": (twelve_bit_rescaled_windowed, 1.0),
    "12bit_stored_range": (lambda pixels: film_dataset(twelve_bit_stored(pixels), bits_stored=12), 1.0),
    "12bit_voi_lut": (twelve_bit_voi_lut, 1.0),
    "jpeg_lossless": (lambda pixels: encapsulated(film_dataset(pixels), jpeg_lossless(pixels), JPEGLosslessSV1), 1.0),
    "jpeg2000_lossless": (compressed(JPEG2000Lossless), 1.0),
    "rle_lossless": (compressed(RLELossless), 1.0),
    "jpeg_baseline_lossy": (jpeg_baseline, 3.0),
}


@pytest.mark.parametrize("kind", list(FILM_WRITERS))
def test_dicom_film_gives_the_png_image(nih_films, tmp_path, kind):
    write, tolerance = FILM_WRITERS[kind]
    for png, pixels in nih_films:
        dcm = tmp_path / f"{png.stem}.dcm"
        dcm.write_bytes(dicom_bytes(write(pixels)))
        from_dicom, from_png = load_xray(dcm, SIZE).astype(float), load_xray(png, SIZE).astype(float)
        difference = np.abs(from_dicom - from_png).mean()
        assert difference <= tolerance, f"{kind} {png.name}: mean |difference| {difference:.2f} grey levels"


def test_lossless_syntaxes_are_pixel_exact(nih_films):
    _, pixels = nih_films[0]
    for kind in ("jpeg_lossless", "jpeg2000_lossless", "rle_lossless", "monochrome1_inverted", "12bit_rescale_window",
                 "12bit_voi_lut"):
        np.testing.assert_array_equal(dicom_to_gray8(dicom_bytes(FILM_WRITERS[kind][0](pixels)), kind), pixels)


def test_format_comes_from_the_bytes_not_the_name(nih_films, tmp_path):
    _, pixels = nih_films[0]
    data = dicom_bytes(film_dataset(pixels))
    assert image_dimensions(data, "film.png") == (pixels.shape[1], pixels.shape[0])
    np.testing.assert_array_equal(decode_to_gray8(data, "film.png"), pixels)


def test_dicom_without_preamble_read_when_named_dcm(nih_films):
    _, pixels = nih_films[0]
    dataset = film_dataset(pixels)
    del dataset.file_meta
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=True, little_endian=True)  # no preamble, no "DICM", no file meta
    data = buffer.getvalue()
    assert data[128:132] != b"DICM"
    np.testing.assert_array_equal(decode_to_gray8(data, "raw.dcm"), pixels)
    with pytest.raises(ImageError, match="raw.bin: not a readable PNG, JPEG or DICOM image"):
        decode_to_gray8(data, "raw.bin")


def test_prepare_image_takes_a_dcm_file(nih_films, tmp_path):
    png, pixels = nih_films[0]
    dcm = tmp_path / "film.dcm"
    dcm.write_bytes(dicom_bytes(compressed(RLELossless)(pixels)))
    from_dicom = prepare_image((str(dcm), 64, "crop", "png", 95, 32, 2.0))
    assert from_dicom == prepare_image((str(png), 64, "crop", "png", 95, 32, 2.0))
    assert from_dicom[3] is None and from_dicom[1:3] == (pixels.shape[1], pixels.shape[0])


def test_multi_frame_refused_before_decoding():
    frames = np.zeros((3, 64, 64), np.uint8)
    with pytest.raises(ImageError, match=r"^cine.dcm: multi-frame DICOM \(3 frames\): export the frontal frame "
                                         r"as its own file$"):
        dicom_to_gray8(dicom_bytes(film_dataset(frames)), "cine.dcm")


def test_colour_refused():
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ImageError, match=r"^photo.dcm: colour DICOM \(RGB\): a chest film is greyscale$"):
        decode_to_gray8(dicom_bytes(film_dataset(rgb, "RGB")), "photo.dcm")


def test_oversized_dicom_refused_from_its_header():
    dataset = film_dataset(np.zeros((64, 64), np.uint8))
    dataset.Rows = dataset.Columns = 20_000  # the pixels do not match: the header is read first
    with pytest.raises(ImageError, match="huge.dcm: 20000x20000 pixels exceeds"):
        decode_to_gray8(dicom_bytes(dataset), "huge.dcm")


def test_truncated_and_corrupt_dicoms_named(nih_films):
    _, pixels = nih_films[0]
    data = dicom_bytes(compressed(JPEG2000Lossless)(pixels))
    with pytest.raises(ImageError, match="cut.dcm: not a readable DICOM image .*truncated"):
        decode_to_gray8(data[: len(data) * 2 // 3], "cut.dcm")
    codestream = next(generate_frames(compressed(JPEG2000Lossless)(pixels).PixelData, number_of_frames=1))
    half_frame = encapsulated(film_dataset(pixels), codestream[: len(codestream) // 2], JPEG2000Lossless)
    with pytest.raises(ImageError, match=r"half.dcm: DICOM pixels cannot be decoded \(JPEG 2000"):
        decode_to_gray8(dicom_bytes(half_frame), "half.dcm")


def test_patient_fields_from_the_header(tmp_path):
    path = tmp_path / "p.dcm"
    path.write_bytes(dicom_bytes(film_dataset(np.zeros((64, 64), np.uint8), PatientAge="058Y", PatientSex="F",
                                              ViewPosition="PA")))
    assert read_dicom_patient(path) == {"age": 58, "sex": "F", "view": "PA"}
    with pytest.warns(UserWarning, match="Invalid value for VR CS"):  # lower case is invalid, and exported anyway
        infant = dicom_bytes(film_dataset(np.zeros((64, 64), np.uint8), PatientAge="013M", PatientSex="O",
                                          ViewPosition=" ll"))
    patient = read_dicom_patient(infant)
    assert patient == {"age": 1, "sex": None, "view": "LL"} and patient["view"] in LATERAL_VIEWS
    assert read_dicom_patient(dicom_bytes(film_dataset(np.zeros((64, 64), np.uint8)))) == {
        "age": None, "sex": None, "view": None}
