"""Shared test fixtures: the project root, the real NIH files in ../shared, small real PNGs."""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.data.nih import KAGGLE_SAMPLE_HEADER

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# train.augment with every augmentation off
NO_AUGMENT = {"rotation": 0, "zoom": 0, "shift": 0, "hflip": False, "brightness": 0, "contrast": 0}
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
NIH_SUBSET = SHARED_DATA / "nih-subset"
NIH_64PX = SHARED_DATA / "nih-64px"


def project_settings(**dotted):
    """The project's params.yaml, checked, with dotted params changed:
    project_settings(**{"train.epochs": 1})."""
    from pipeline.core.settings import load_settings, with_overrides

    return with_overrides(load_settings(PROJECT_ROOT / "params.yaml"), **dotted)


def build_manifest(root: Path, split: dict, seed: int, require_all_images: bool = False, source: str = "nih"):
    """An NIH-layout root's manifest and ingest report (build_nih_manifest without its rejected rows)."""
    from pipeline.data.ingest import build_nih_manifest

    manifest, _, report = build_nih_manifest(root, split, seed, require_all_images, source)
    return manifest, report


def section_settings(section: str, **changes):
    """One typed section of the project's params.yaml with some params changed:
    section_settings("train", epochs=1)."""
    return getattr(project_settings(**{f"{section}.{key}": value for key, value in changes.items()}), section)


@pytest.fixture(autouse=True)
def restore_sys_path() -> Iterator[None]:
    """sys.path as it was before each test. Loading a registered pyfunc puts
    MLflow's copy of the model's code (a few pipeline modules) in front of
    it; a later test's spawned workers (preprocess, phantom), which import
    from this process's sys.path, would then find that partial package
    ("No module named 'pipeline.core.parallel'"), depending on which tests
    ran before in the same process."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def require_shared(path: Path, what: str) -> None:
    """Skip when ../shared is absent (a user's clone has none); under CI=true,
    where it is always laid out, its absence is a failure, not a skip."""
    if path.exists():
        return
    reason = f"{what} not found at {path} (../shared is only in developer and CI checkouts)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture
def nih_subset() -> Path:
    require_shared(NIH_SUBSET / "Data_Entry_2017_v2020.csv.gz", "real NIH subset")
    return NIH_SUBSET


@pytest.fixture
def nih_64px() -> Path:
    require_shared(NIH_64PX / "train", "real NIH 64px images")
    return NIH_64PX


@contextmanager
def mlflow_store(store: str) -> Iterator:
    """MLflow's process-wide tracking URI set to `store` inside the block (as
    register_model and mlflow.pyfunc need), and restored after it, with
    MLFLOW_TRACKING_URI (which MLflow mirrors it into). Yields mlflow."""
    import mlflow

    was_set, previous = mlflow.is_tracking_uri_set(), mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        mlflow.set_tracking_uri(store)
        try:
            yield mlflow
        finally:
            mlflow.set_tracking_uri(previous if was_set else None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), f"could not write {path}"
    return path


NIH_2017_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def make_nih_root(root: Path, rows: list[tuple], size: int = 48, trailing_comma: bool = True) -> Path:
    """A small NIH-format data root: images/ with real PNGs and Data_Entry_2017.csv.

    rows: (image_id, finding_labels, follow_up, patient_id, age, sex, view)
    """
    rng = np.random.default_rng(0)
    lines = [NIH_2017_HEADER if trailing_comma else NIH_2017_HEADER.rstrip(",")]
    for image_id, labels, follow_up, patient, age, sex, view in rows:
        write_png(root / "images" / image_id, rng.integers(0, 255, (size, size), dtype=np.uint8))
        line = f"{image_id},{labels},{follow_up},{patient},{age},{sex},{view},{size},{size},0.143,0.143"
        lines.append(line + ("," if trailing_comma else ""))
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return root


def make_kaggle_sample_root(root: Path, rows: list[tuple], size: int = 48, images: str = "sample/images") -> Path:
    """A small root in the layout of Kaggle's NIH sample: sample_labels.csv and
    sample/images/ with real PNGs. rows as for make_nih_root, ages as Kaggle
    writes them ("060Y", "013M")."""
    rng = np.random.default_rng(0)
    lines = [KAGGLE_SAMPLE_HEADER]
    for image_id, labels, follow_up, patient, age, sex, view in rows:
        write_png(root / images / image_id, rng.integers(0, 255, (size, size), dtype=np.uint8))
        lines.append(f"{image_id},{labels},{follow_up},{patient},{age},{sex},{view},{size},{size},0.143,0.143")
    (root / "sample_labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def small_nih_root(tmp_path: Path) -> Path:
    """12 images of 6 patients, a mix of findings."""
    labels = ["No Finding", "Mass", "Effusion|Nodule", "No Finding", "Cardiomegaly", "Hernia"]
    rows = []
    for patient in range(1, 7):
        for follow_up in range(2):
            rows.append((f"{patient:08d}_{follow_up:03d}.png", labels[patient - 1], follow_up, patient,
                         30 + patient, "MF"[patient % 2], ("PA", "AP")[follow_up]))
    return make_nih_root(tmp_path / "nih", rows)


@pytest.fixture
def tiny_shards(small_nih_root: Path, tmp_path: Path) -> Path:
    """TFRecord shards of 12 small real PNGs at 32 px (train 0.6, val 0.2, test 0.2 of the patients)."""
    import json

    from pipeline.records.preprocess import write_tfrecord_shards

    manifest, _ = build_manifest(small_nih_root, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    out = tmp_path / "tfrecords"
    out.mkdir()
    index, _ = write_tfrecord_shards(manifest, out, image_size=32, shard_size=100)
    (out / "index.json").write_text(json.dumps(index))
    return out
