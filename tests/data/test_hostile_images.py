"""Preprocess on what a user's folder may really hold: a decompression bomb
named .png, a 1x1 placeholder, a 3000x40 strip and a 12-bit film in a 16-bit
PNG next to a good NIH film. The good and 12-bit films become records; the
rest are quarantined with their reasons, and memory stays low."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.core.labels import FINDINGS
from pipeline.data.manifest import MANIFEST_COLUMNS
from pipeline.records.dataset import make_dataset
from pipeline.records.imaging import decode_to_gray8, load_xray
from pipeline.records.preprocess import write_tfrecord_shards
from tests.code.test_imaging import jpeg_bomb
from tests.conftest import NIH_SUBSET, PROJECT_ROOT, require_shared, write_png

SIZE = 64
SETTINGS = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["preprocess"]
SHAPE = {"min_side": int(SETTINGS["min_side"]), "max_aspect": float(SETTINGS["max_aspect"])}
# Peak memory allowed on top of what TensorFlow's import takes: a 1024 px NIH
# film costs ~1 MB decoded; the bomb, decoded, would cost 3 GB.
EXTRA_PEAK_MB = 300


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    """The five files, each under the id it is listed with in the manifest."""
    source = NIH_SUBSET / "images_001" / "images"
    require_shared(source, "real NIH subset images")
    good, other = sorted(source.glob("*.png"))[:2]
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes(good.read_bytes())
    (folder / "bomb.png").write_bytes(jpeg_bomb())
    write_png(folder / "one_pixel.png", np.zeros((1, 1), np.uint8))
    write_png(folder / "strip.png", np.full((40, 3000), 128, np.uint8))
    original = decode_to_gray8(other.read_bytes(), str(other))
    write_png(folder / "twelve_bit.png", (original.astype(np.uint32) * 4095 // 255).astype(np.uint16))
    write_png(folder / "twelve_bit_as_8bit.png", original)  # the reference, not in the manifest
    return folder


def manifest_of(folder: Path, names: list[str]) -> pd.DataFrame:
    rows = []
    for patient, name in enumerate(names, start=1):
        row = {"image_id": name, "path": str(folder / name), "patient_id": patient, "follow_up": 0, "age": 50,
               "sex": "F", "view": "PA", "finding_labels": "No Finding", "split": "train"}
        rows.append({**row, **{finding: 0 for finding in FINDINGS}})
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


NAMES = ["good.png", "bomb.png", "one_pixel.png", "strip.png", "twelve_bit.png"]


def test_hostile_files_quarantined_with_their_reasons(hostile_folder, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    index, quarantine = write_tfrecord_shards(manifest_of(hostile_folder, NAMES), out, image_size=SIZE, workers=2,
                                              **SHAPE)
    reasons = dict(zip(quarantine["image_id"], quarantine["reason"]))
    assert sorted(reasons) == ["bomb.png", "one_pixel.png", "strip.png"]
    assert "bomb.png: 32000x32000 pixels exceeds" in reasons["bomb.png"]
    assert (f"one_pixel.png: 1x1 pixels: the shorter side is below the minimum of {SHAPE['min_side']} px "
            f"(preprocess.min_side)") in reasons["one_pixel.png"]
    assert "strip.png: 3000x40: aspect ratio 75.0 is beyond" in reasons["strip.png"]
    assert index["splits"]["train"]["records"] == 2 and index["quarantined"] == 3

    files = [str(out / shard["file"]) for shard in index["shards"]]
    records = {image_id.numpy()[0].decode(): image.numpy()[0, :, :, 0]
               for image, _, image_id in make_dataset(files, 1, with_ids=True)}
    assert sorted(records) == ["good.png", "twelve_bit.png"]
    np.testing.assert_array_equal(records["good.png"], load_xray(hostile_folder / "good.png", SIZE))
    reference = load_xray(hostile_folder / "twelve_bit_as_8bit.png", SIZE).astype(int)
    assert np.abs(records["twelve_bit.png"].astype(int) - reference).max() <= 1  # not nearly black


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking
# process (pytest, TensorFlow loaded), which would hide any rise; VmHWM starts afresh.
PEAK_SCRIPT = """
import json, sys
import pandas as pd
from pipeline.records import tfrecords  # TensorFlow: the baseline
from pipeline.records.preprocess import write_tfrecord_shards
def peak_kib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
baseline = peak_kib()
manifest = pd.read_csv(sys.argv[1], keep_default_na=False)
index, quarantine = write_tfrecord_shards(manifest, __import__("pathlib").Path(sys.argv[2]), image_size=64,
                                          workers=1, min_side=int(sys.argv[3]), max_aspect=float(sys.argv[4]))
peak = peak_kib()
print(json.dumps({"baseline_kib": baseline, "peak_kib": peak, "quarantined": sorted(quarantine["image_id"])}))
"""


def test_peak_memory_stays_low(hostile_folder, tmp_path):
    """Decoding in this one process (workers=1): the bomb, refused from its header, adds nothing."""
    manifest = tmp_path / "manifest.csv"
    manifest_of(hostile_folder, NAMES).to_csv(manifest, index=False)
    out = tmp_path / "shards"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(manifest), str(out), str(SHAPE["min_side"]), str(SHAPE["max_aspect"])],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["quarantined"] == ["bomb.png", "one_pixel.png", "strip.png"]
    extra_mb = (result["peak_kib"] - result["baseline_kib"]) / 1024
    assert extra_mb < EXTRA_PEAK_MB, f"preprocessing the five files added {extra_mb:.0f} MB to peak RSS"


# --------------------------------------------------------------------------
# Films that used to be trained on, or to stop or freeze a run (issue 26)


def lying_jpeg_dicom(pixels: np.ndarray, claimed: int = 16000) -> bytes:
    """A JPEG Baseline DICOM whose header says the film's size but whose embedded
    codestream's frame header claims claimed x claimed pixels."""
    import struct

    from tests.data.test_dicom import dicom_bytes, encapsulated, film_dataset

    ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok
    frame = bytearray(jpeg.tobytes())
    sof = frame.index(b"\xff\xc0")
    frame[sof + 5:sof + 9] = struct.pack(">HH", claimed, claimed)
    from pydicom.uid import JPEGBaseline8Bit

    return dicom_bytes(encapsulated(film_dataset(pixels), bytes(frame), JPEGBaseline8Bit))


# Runs prepare_image on one file under a 1 GiB address-space limit: what a
# trusting decoder would need for the lie (16000 x 16000) is beyond it.
UNDER_1GB = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from pipeline.records.film import prepare_image
encoded, width, height, error = prepare_image((sys.argv[1], 64, "crop", "png", 95, 32, 2.0))
print(json.dumps({"error": error, "written": encoded is not None}))
"""


def test_a_dicom_whose_embedded_jpeg_lies_is_refused_from_its_header_under_1gb(tmp_path):
    film = tmp_path / "liar.dcm"
    film.write_bytes(lying_jpeg_dicom(np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)))
    done = subprocess.run([sys.executable, "-c", UNDER_1GB, str(film)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"written": False, "error": (
        f"{film}: the embedded JPEG codestream is 16000x16000 pixels but the DICOM header says 256x256 "
        f"(Columns x Rows): refused before decoding")}


@pytest.fixture
def refused_films(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A good NIH film beside films a served model refuses, each with the start of its reason."""
    import os

    from tests.data.test_dicom import dicom_bytes, film_dataset

    source = NIH_SUBSET / "images_001" / "images"
    require_shared(source, "real NIH subset images")
    good = sorted(source.glob("*.png"))[0]
    pixels = decode_to_gray8(good.read_bytes(), str(good))
    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "good.png").write_bytes(good.read_bytes())
    write_png(folder / "zero16.png", np.zeros((512, 512), np.uint16))
    (folder / "slope0.dcm").write_bytes(dicom_bytes(film_dataset(pixels, RescaleSlope=0, RescaleIntercept=0)))
    (folder / "lateral.dcm").write_bytes(dicom_bytes(film_dataset(pixels, ViewPosition="LL")))
    os.mkfifo(folder / "pipe.png")
    (folder / "passwd.png").symlink_to("/etc/passwd")
    reasons = {
        "zero16.png": "blank film (all grey level 0; a radiograph spans at least 8 levels)",
        "slope0.dcm": "blank film (all grey level 0; a radiograph spans at least 8 levels)",
        "lateral.dcm": "lateral view (ViewPosition LL): the models learn from and are tested on frontal PA/AP films",
        "pipe.png": "is a named pipe (FIFO), not an image file",
        "passwd.png": "not a readable PNG, JPEG or DICOM image (its first bytes are none of their signatures)",
    }
    return folder, reasons


def test_blank_lateral_and_special_files_are_quarantined_not_trained_on(refused_films, tmp_path):
    import signal

    folder, expected = refused_films
    out = tmp_path / "shards"
    out.mkdir()
    signal.alarm(120)  # a FIFO opened for reading would block forever: fail instead of hanging the suite
    try:
        index, quarantine = write_tfrecord_shards(manifest_of(folder, ["good.png", *expected]), out,
                                                  image_size=SIZE, workers=2, **SHAPE)
    finally:
        signal.alarm(0)
    reasons = dict(zip(quarantine["image_id"], quarantine["reason"]))
    assert sorted(reasons) == sorted(expected)
    for name, reason in expected.items():
        assert reasons[name].startswith(f"{folder / name}: {reason}"), reasons[name]
    assert "root:" not in reasons["passwd.png"]  # the linked file's first bytes are not quoted
    assert index["splits"]["train"]["records"] == 1


def kill_one_worker_when_running(stop: threading.Event, killed: list) -> None:
    """SIGKILL one of this process's pool workers once it has work, as the OOM killer or a user would."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        workers = [c for c in me.children() if "spawn_main" in " ".join(c.cmdline())]
        busy = [w for w in workers if w.cpu_times().user > 0.8]  # past its imports (~0.4 s), decoding films
        if busy:
            busy[0].kill()
            killed.append(busy[0].pid)
            return
        time.sleep(0.05)


def test_a_worker_killed_mid_run_loses_no_film(tmp_path, capfd):
    source = NIH_SUBSET / "images_001" / "images"
    require_shared(source, "real NIH subset images")
    names = [p.name for p in sorted(source.glob("*.png"))[:200]]
    manifest = manifest_of(source, names)
    clean, killed_run = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir()
    killed_run.mkdir()
    reference, _ = write_tfrecord_shards(manifest, clean, image_size=SIZE, workers=2, **SHAPE)

    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_one_worker_when_running, args=(stop, killed), daemon=True)
    killer.start()
    try:
        index, quarantine = write_tfrecord_shards(manifest, killed_run, image_size=SIZE, workers=2, **SHAPE)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed: the run ended before the killer found one busy"
    assert "preprocess: a worker process died (killed by SIGKILL" in capfd.readouterr().err
    # The killed worker's films ran again alone, and came out as they would have: nothing lost, nothing different.
    assert quarantine.empty
    assert [(s["file"], s["sha256"]) for s in index["shards"]] == [(s["file"], s["sha256"]) for s in
                                                                 reference["shards"]]
