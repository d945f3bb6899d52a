"""The ingest stage's reading of a data root: by its source's record
(pipeline.data.sources), whose readers are here: a data root and the ingest
params in, (manifest, rejected rows, report) out."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data.csv_file import DataEntryError
from pipeline.data.folder import build_folder_manifest
from pipeline.data.ingest import build_nih_manifest, read_boxes
from pipeline.data.sources import SourceRequest, source_named


def read_nih(request: SourceRequest):
    """NIH's Box or Kaggle download."""
    return build_nih_manifest(request.root, request.split, request.seed, request.require_all_images, source="nih")


def read_kaggle_sample(request: SourceRequest):
    """Kaggle's 5,606-image sample: sample_labels.csv and sample/images/."""
    return build_nih_manifest(request.root, request.split, request.seed, request.require_all_images,
                              source="kaggle-sample")


def read_phantom(request: SourceRequest):
    """The phantom stage's output, written in NIH's Box layout."""
    if not (request.root / "images").is_dir():
        raise DataEntryError(f"{request.root}: no phantom here; the phantom stage makes it (dvc repro)")
    return build_nih_manifest(request.root, request.split, request.seed, request.require_all_images, source="nih")


def read_folder(request: SourceRequest):
    """A folder of the user's own films with a labels CSV (ingest.labels)."""
    if not request.labels:
        raise DataEntryError("ingest.labels is empty: the folder source needs a labels CSV (see docs/real-data.md)")
    return build_folder_manifest(request.root, request.root / request.labels, request.split, request.seed,
                                 extra_columns=request.strata)


def ingest_data_root(
    source: str,
    root: Path,
    split: dict,
    seed: int,
    require_all_images: bool = False,
    labels: Path | str | None = None,
    strata: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict], dict]:
    """The ingest stage: read the data root (the phantom stage's output, the
    user's NIH or Kaggle download, or a folder of their own films with a
    labels CSV, by `source`) into the manifest and the box list of its images.
    `labels`: the folder source's labels CSV, relative to root unless absolute.
    Returns (manifest, boxes, rejected rows, report).

    The stage's DVC deps include the root itself, so a changed metadata CSV,
    box list, split list or set of images reruns it (see dvc.yaml)."""
    root = Path(root)
    request = SourceRequest(root, split, seed, require_all_images, labels, tuple(strata))
    manifest, rejected, report = source_named(source).read(request)
    boxes = read_boxes(root, set(manifest["image_id"]))
    return manifest, boxes, rejected, {**report, "source": source, "boxes": len(boxes)}
