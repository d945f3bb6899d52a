"""DICOM films: the header checks and the grey-level pipeline a viewer applies.

A DICOM film becomes 8-bit grey the way a DICOM viewer displays it:
  1. Modality LUT: the Modality LUT Sequence, or RescaleSlope/Intercept;
  2. VOI: the VOI LUT Sequence (scaled by its entry bits), else the first
     WindowCenter/Width (scaled by the output range pydicom's windowing uses),
     else the whole range BitsStored can hold, mapped through step 1;
  3. MONOCHROME1 (white = 0) inverted, so bone is bright as in MONOCHROME2.
The transform is computed once per film as a lookup table over the stored
values (BitsStored <= 16), so a large film costs one byte per pixel, not the
float copies a per-pixel rescale would. Compressed transfer syntaxes (JPEG
Baseline, JPEG Lossless, JPEG-LS, JPEG 2000, RLE) decode through pylibjpeg.
Multi-frame and colour DICOMs are refused: a chest film is one grey frame.
"""
from __future__ import annotations

import copy
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipeline.core.faults import first_line
from pipeline.records.codestream import J2K_SEARCH_BYTES, J2K_SOC_SIZ, j2k_dimensions, jpeg_dimensions
from pipeline.records.image_file import DICOM_MAGIC_OFFSET, ImageError, check_pixel_count, read_image_bytes

# ViewPosition values of a lateral film (NIH's set has only PA and AP).
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT")
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
MAX_BITS_STORED = 16
AGE_STRING = re.compile(r"^\s*(\d+)\s*([DWMY]?)\s*$")
# As pipeline.data.nih reads Kaggle's ages: months, weeks and days round down to whole years.
YEARS_PER_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
JPEG_SOI = b"\xff\xd8"


def _one_line(exc: BaseException) -> str:
    """pydicom's errors say little without their type: "KeyError: (7fe0,0010)"."""
    text = first_line(exc)
    return text if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"


def read_dataset(data: bytes, name: str, with_pixels: bool = True) -> Dataset:
    """Parse DICOM bytes; without the "DICM" preamble pydicom is forced (the
    caller decided it is DICOM: imaging.image_format admits that only for a .dcm name)."""
    has_preamble = data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM"
    try:
        with warnings.catch_warnings():
            # e.g. "End of file reached before delimiter": the ImageError below says it once, with the name
            warnings.simplefilter("ignore", UserWarning)
            dataset = pydicom.dcmread(io.BytesIO(data), force=not has_preamble, stop_before_pixels=not with_pixels)
    except Exception as exc:  # pydicom raises many types on malformed files
        raise ImageError(f"{name}: not a readable DICOM file ({_one_line(exc)})") from exc
    if "Rows" not in dataset or "Columns" not in dataset:
        # pydicom returns an empty dataset for a file cut inside its pixel data
        raise ImageError(f"{name}: not a readable DICOM image (no Rows/Columns: corrupt, truncated or not an image)")
    return dataset


def dicom_dimensions(data: bytes, name: str = "image") -> tuple[int, int]:
    """(width, height) = (Columns, Rows) from the header, pixels not read."""
    dataset = read_dataset(data, name, with_pixels=False)
    return int(dataset.Columns), int(dataset.Rows)


def check_single_grey_frame(dataset: Dataset, name: str) -> None:
    """ImageError for what is not one greyscale film: several frames, colour, > 16 bits."""
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"{name}: multi-frame DICOM ({frames} frames): export the frontal frame as its own file")
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in GREYSCALE:
        raise ImageError(f"{name}: colour DICOM ({photometric or 'no PhotometricInterpretation'}): "
                         f"a chest film is greyscale")
    bits = int(dataset.get("BitsStored", 0) or 0)
    if not 1 <= bits <= MAX_BITS_STORED:
        raise ImageError(f"{name}: DICOM BitsStored {bits} is not supported (a radiograph stores 1 to 16 bits)")


def stored_values(dataset: Dataset) -> np.ndarray:
    """Every value BitsStored can hold, in order (signed when PixelRepresentation is 1)."""
    bits = int(dataset.BitsStored)
    if int(dataset.get("PixelRepresentation", 0) or 0) == 1:
        return np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=np.int64)
    return np.arange(0, 2**bits, dtype=np.int64)


def window_output_range(dataset: Dataset, modality: np.ndarray) -> tuple[float, float]:
    """The (low, high) that pydicom's apply_windowing maps values below and
    above the window to: a Modality LUT's entry range, else the stored range
    through the rescale (pydicom.pixels.processing.apply_windowing)."""
    if dataset.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(dataset.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    return float(modality[0]), float(modality[-1])


def first_voi_lut(dataset: Dataset) -> Dataset:
    """A dataset holding only the first VOI LUT, declared with 16-bit entries.

    pydicom 3.0.2's apply_voi indexes an 8-bit LUT with uint8 indices, so a
    4096-entry LUT (the usual one for a 12-bit film) wraps input 4000 to 160;
    declaring 16 bits changes only the index type. LUT Data is stored in
    16-bit words whatever the entry bits, so it reads the same.
    """
    item = copy.deepcopy(dataset.VOILUTSequence[0])
    entries, first_mapped, _ = item.LUTDescriptor
    item.LUTDescriptor = [entries, first_mapped, 16]
    holder = Dataset()
    holder.file_meta = dataset.file_meta  # the byte order of OW LUT Data
    holder.VOILUTSequence = Sequence([item])
    return holder


def grey_lookup_table(dataset: Dataset) -> np.ndarray:
    """uint8 display value of every stored value (the module docstring's steps)."""
    stored = stored_values(dataset)
    modality = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    if dataset.get("VOILUTSequence"):
        # pydicom's VOI LUT indexes by value: give it integers, as a Modality LUT yields
        display = np.asarray(apply_voi_lut(np.round(modality).astype(np.int64), first_voi_lut(dataset)),
                             dtype=np.float64)
        low, high = 0.0, float(2 ** int(dataset.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        display = np.asarray(apply_voi_lut(modality, dataset, prefer_lut=False), dtype=np.float64)
        low, high = window_output_range(dataset, modality)
    else:
        display, low, high = modality, float(modality.min()), float(modality.max())
    if high == low:
        grey = np.zeros_like(display)
    else:
        grey = (display - low) * (255.0 / (high - low))
    grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    if str(dataset.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        grey = 255 - grey
    return grey


def _with_transfer_syntax(dataset: Dataset) -> Dataset:
    # A DICOM written without its file meta (no preamble) has no Transfer
    # Syntax UID; its pixels are then uncompressed in the encoding it was read in.
    if "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if dataset.original_encoding[0] else ExplicitVRLittleEndian)
    return dataset


def embedded_frame_dimensions(dataset: Dataset, name: str) -> tuple[str, tuple[int, int]] | None:
    """(codestream kind, (width, height)) read from the header of a compressed
    DICOM's first pixel fragment, None for uncompressed pixels or RLE (whose
    decoded size is Rows x Columns by construction)."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is None or not syntax.is_encapsulated or "PixelData" not in dataset:
        return None
    try:
        fragments = generate_fragments(dataset.PixelData)
        next(fragments, None)  # the Basic Offset Table item
        first = next(fragments, b"")
    except ValueError as exc:
        raise ImageError(f"{name}: DICOM encapsulated pixel data is broken ({_one_line(exc)})") from exc
    if first.startswith(JPEG_SOI):
        return "JPEG", jpeg_dimensions(first, name)
    if J2K_SOC_SIZ in first[:J2K_SEARCH_BYTES]:
        return "JPEG 2000", j2k_dimensions(first, name)
    return None


def check_embedded_frame(dataset: Dataset, name: str) -> None:
    """ImageError when a compressed DICOM's codestream claims another size than
    its Rows/Columns: the decoder allocates what the codestream says, so a
    978-byte file whose header says 256x256 could otherwise cost gigabytes."""
    embedded = embedded_frame_dimensions(dataset, name)
    if embedded is None:
        return
    kind, (width, height) = embedded
    columns, rows = int(dataset.Columns), int(dataset.Rows)
    if (width, height) != (columns, rows):
        raise ImageError(f"{name}: the embedded {kind} codestream is {width}x{height} pixels but the DICOM header "
                         f"says {columns}x{rows} (Columns x Rows): refused before decoding")


def dicom_to_gray8(data: bytes, name: str = "image") -> np.ndarray:
    """DICOM bytes -> 2-D uint8 display image; the header (size, frames,
    colour) is checked before the pixels are decoded."""
    dataset = read_dataset(data, name)
    check_pixel_count(int(dataset.Columns), int(dataset.Rows), name)
    check_single_grey_frame(dataset, name)
    if "PixelData" not in dataset:
        raise ImageError(f"{name}: DICOM without (integer) PixelData")
    check_embedded_frame(dataset, name)
    try:
        stored = _with_transfer_syntax(dataset).pixel_array
        table = grey_lookup_table(dataset)
    except ImageError:
        raise
    except Exception as exc:  # decoders (pylibjpeg, numpy, pydicom) raise many types on bad data
        syntax = dataset.file_meta.get("TransferSyntaxUID")
        raise ImageError(f"{name}: DICOM pixels cannot be decoded "
                         f"({getattr(syntax, 'name', syntax)}; {_one_line(exc)})") from exc
    if stored.ndim != 2:
        raise ImageError(f"{name}: DICOM pixels have shape {stored.shape}, not one grey frame")
    first = int(stored_values(dataset)[0])
    # Values outside BitsStored (stray high bits) are clipped to its range.
    index = np.clip(stored.astype(np.int64, copy=False) - first, 0, len(table) - 1)
    return np.ascontiguousarray(table[index])


def _age_in_years(value: object) -> int | None:
    match = AGE_STRING.match(str(value or ""))
    if not match:
        return None
    return int(int(match.group(1)) * YEARS_PER_UNIT[match.group(2)] + 1e-9)


def read_dicom_patient(data_or_path: bytes | Path | str) -> dict:
    """{"age": whole years or None, "sex": "M"/"F"/None, "view": ViewPosition
    upper-cased ("PA", "AP", "LL", ...) or None} from a DICOM's header."""
    if isinstance(data_or_path, (bytes, bytearray)):
        data, name = bytes(data_or_path), "DICOM"
    else:
        data, name = read_image_bytes(data_or_path), str(data_or_path)
    dataset = read_dataset(data, name, with_pixels=False)
    sex = str(dataset.get("PatientSex", "") or "").strip().upper()
    view = str(dataset.get("ViewPosition", "") or "").strip().upper()
    return {"age": _age_in_years(dataset.get("PatientAge")), "sex": sex if sex in ("M", "F") else None,
            "view": view or None}
