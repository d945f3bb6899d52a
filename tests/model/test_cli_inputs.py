"""`cxr predict` on films as users have them: DICOM beside PNG, lateral views,
DICOM patient tags for a metadata model, and hostile files that must not sink
the batch. DICOMs are written with pydicom from real NIH PNGs in ../shared."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation

from pipeline.core.labels import FINDINGS
from pipeline.model.architectures import build_model
from pipeline.records.imaging import decode_to_gray8
from pipeline.serve.cli import main as cxr_main
from pipeline.serve.predict import load_model
from tests.conftest import write_png
from tests.data.test_hostile_images import lying_jpeg_dicom
from tests.model.test_predict import CXR, SIZE, nih_images, register_test_models

# The figure: a DICOM and its PNG get the same findings to this much.
SAME_PROBABILITY = 0.02
PEAK_RSS_LIMIT_MIB = 2048
LATERAL_MESSAGE = ("lateral view (ViewPosition LL): the model was trained on frontal PA/AP films; "
                   "--allow-lateral to predict anyway")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return register_test_models(tmp_path_factory.mktemp("cli-inputs"))


@pytest.fixture(scope="module")
def metadata_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("metadata-model") / "metadata.keras"
    build_model("small_cnn", SIZE, "none", use_metadata=True).save(path)
    return path


def write_dicom(path: Path, stored: np.ndarray, photometric: str, bits_stored: int, **tags) -> Path:
    """A single-frame digital X-ray DICOM file (Part 10, with preamble) holding `stored` as its pixels."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.Modality = "DX"
    dataset.PatientID = "cxr-test"
    dataset.set_pixel_data(stored, photometric, bits_stored)
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for tag, value in tags.items():
        setattr(dataset, tag, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def grey_of(png: Path) -> np.ndarray:
    return decode_to_gray8(png.read_bytes(), str(png))


def dicom_twins(pngs: list[Path], folder: Path) -> list[Path]:
    """One DICOM per PNG, each stored the way a different modality writes it."""
    first, second, third = (grey_of(png) for png in pngs)
    return [
        # MONOCHROME1: 0 is white, so the stored values are the film inverted.
        write_dicom(folder / "inverted.dcm", (255 - first).astype(np.uint8), "MONOCHROME1", 8, ViewPosition="PA"),
        # A 12-bit detector: stored = 16 v + 8; the rescale maps it back to v, and the
        # window (centre 128, width 256) spans exactly v's 0..255.
        write_dicom(folder / "detector12.DCM", second.astype(np.uint16) * 16 + 8, "MONOCHROME2", 12,
                    RescaleSlope=0.0625, RescaleIntercept=-0.5, WindowCenter=128, WindowWidth=256,
                    ViewPosition="AP"),
        write_dicom(folder / "plain8.dcm", third, "MONOCHROME2", 8, ViewPosition="PA"),
    ]


def probabilities_of(result: dict) -> np.ndarray:
    assert "error" not in result, result
    return np.array([result["probabilities"][f] for f in FINDINGS])


def test_dicom_and_png_in_one_call_get_the_same_findings(registry, nih_subset, tmp_path, capsys):
    pngs = nih_images(nih_subset, gray=2)  # an RGBA PNG and two grey ones
    dicoms = dicom_twins(pngs, tmp_path)
    images = [str(p) for pair in zip(dicoms, pngs) for p in pair]

    assert cxr_main(["predict", *images, "--json", "--tracking-uri", registry.store]) == 0
    by_image = {r["image"]: r for r in json.loads(capsys.readouterr().out)}
    for dicom, png in zip(dicoms, pngs):
        difference = np.abs(probabilities_of(by_image[str(dicom)]) - probabilities_of(by_image[str(png)]))
        assert difference.max() <= SAME_PROBABILITY, (dicom.name, difference.max())


def test_a_lateral_dicom_is_refused_unless_allowed(registry, nih_subset, tmp_path, capsys):
    png = nih_images(nih_subset, gray=1)[1]
    lateral = write_dicom(tmp_path / "lateral.dcm", grey_of(png), "MONOCHROME2", 8, ViewPosition="LL")
    frontal = str(png)
    store = ["--tracking-uri", registry.store]

    assert cxr_main(["predict", str(lateral), frontal, "--json", *store]) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert results[0] == {"image": str(lateral), "error": LATERAL_MESSAGE}
    assert "probabilities" in results[1]
    assert f"cxr: error: {lateral}: {LATERAL_MESSAGE}" in captured.err.splitlines()

    assert cxr_main(["predict", str(lateral), "--json", "--allow-lateral", *store]) == 0
    np.testing.assert_allclose(probabilities_of(json.loads(capsys.readouterr().out)[0]),
                               probabilities_of(results[1]), atol=1e-5)


def test_a_metadata_model_takes_age_sex_and_view_from_the_dicom(metadata_model, nih_subset, tmp_path, capsys):
    png = nih_images(nih_subset, gray=1)[1]
    tagged = write_dicom(tmp_path / "tagged.dcm", grey_of(png), "MONOCHROME2", 8,
                         PatientAge="058Y", PatientSex="F", ViewPosition="AP")
    untagged = write_dicom(tmp_path / "untagged.dcm", grey_of(png), "MONOCHROME2", 8, PatientSex="M")
    model = load_model(metadata_model)
    pixels = model.preprocess(png)
    from_tags = model.predict(pixels, {"age": 58, "sex": "F", "view": "AP"})
    given = model.predict(pixels, {"age": 30, "sex": "M", "view": "PA"})
    assert np.abs(from_tags - given).max() > 1e-3, "the model ignores its metadata: the test would prove nothing"

    # No --age/--sex/--view: the DICOM's own tags; a PNG has none, a DICOM without ViewPosition lacks one.
    status = cxr_main(["predict", str(tagged), str(png), str(untagged), "--model", str(metadata_model), "--json"])
    captured = capsys.readouterr()
    assert status == 1
    results = json.loads(captured.out)
    np.testing.assert_allclose(probabilities_of(results[0]), from_tags, atol=1e-5)
    assert "no age, sex or view for a PNG/JPEG" in results[1]["error"]
    assert results[2]["error"] == ("patient metadata: the DICOM header has no ViewPosition: give --age, --sex and "
                                   "--view, or --metadata CSV")

    # What the user gives overrides the tags.
    assert cxr_main(["predict", str(tagged), "--model", str(metadata_model), "--json",
                     "--age", "30", "--sex", "M", "--view", "PA"]) == 0
    np.testing.assert_allclose(probabilities_of(json.loads(capsys.readouterr().out)[0]), given, atol=1e-5)


def jpeg_bomb(size: int = 631) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to claim 32000x32000x3, cut to `size` bytes:
    a decoder that trusts the header would allocate about 3 GB before finding the data missing."""
    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", 32000, 32000)
    assert data[frame + 9] == 3 and len(data) > size
    return bytes(data[:size])


# Runs its arguments as a child and reports the child's peak resident memory (KiB on Linux) on stderr's last line.
PEAK_RSS_PROBE = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stdout.write(done.stdout); sys.stderr.write(done.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(done.returncode)\n"
)


def test_hostile_files_are_named_and_the_good_film_predicted(registry, nih_subset, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(jpeg_bomb())
    assert bomb.stat().st_size == 631
    dot = write_png(tmp_path / "dot.png", np.zeros((1, 1), np.uint8))
    strip = write_png(tmp_path / "strip.png", np.full((40, 3000), 128, np.uint8))
    good = nih_images(nih_subset, gray=1)[1]
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)  # read as a film, it would block cxr forever
    blank = write_png(tmp_path / "blank16.png", np.zeros((512, 512), np.uint16))
    liar = tmp_path / "liar.dcm"
    liar.write_bytes(lying_jpeg_dicom(grey_of(good)[:512, :512]))
    images = [str(p) for p in (bomb, good, dot, strip, pipe, blank, liar)]

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_PROBE, str(CXR), "predict", *images, "--json"],
                          cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": registry.store},
                          capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started

    *stderr, peak_kib = done.stderr.splitlines()
    assert done.returncode == 1, done.stderr
    results = {r["image"]: r for r in json.loads(done.stdout)}
    assert "32000x32000 pixels exceeds the limit" in results[str(bomb)]["error"]
    assert "1x1 pixels: the shorter side is below the minimum" in results[str(dot)]["error"]
    assert "3000x40: aspect ratio 75.0 is beyond" in results[str(strip)]["error"]
    assert results[str(pipe)]["error"] == "is a named pipe (FIFO), not an image file"
    assert results[str(blank)]["error"].startswith("blank film (all grey level 0")
    assert results[str(liar)]["error"].startswith("the embedded JPEG codestream is 16000x16000 pixels")
    assert len(probabilities_of(results[str(good)])) == len(FINDINGS)
    assert [line.split(": ")[2] for line in stderr if line.startswith("cxr: error: ")] == [
        str(bomb), str(dot), str(strip), str(pipe), str(blank), str(liar)]
    assert "Traceback" not in done.stderr
    assert int(peak_kib) / 1024 < PEAK_RSS_LIMIT_MIB, f"cxr peaked at {int(peak_kib) / 1024:.0f} MiB"
    assert seconds < 60, f"cxr took {seconds:.0f} s"
