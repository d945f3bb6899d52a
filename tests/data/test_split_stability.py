"""Splits under growth: adding images or patients must not move an image that
was already there to another split, or a model's "test" images of today are
the training images of the model it is compared with tomorrow.

The hash method (a patient's split is a pure function of seed and patient id)
is stable; the stratified random method is not, which is why hash is the
recommended ingest.split.method and random is kept only to reproduce old runs.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data.split import assign_hash_splits, assign_patient_splits
from tests.conftest import NIH_SUBSET, build_manifest, require_shared

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}
FULL_CSV = NIH_SUBSET / "Data_Entry_2017_v2020.csv.gz"
SUBSET_IMAGES = NIH_SUBSET / "images_001" / "images"


@pytest.fixture(scope="module")
def full_csv():
    """NIH's full metadata table (112,120 images, 30,805 patients) and its labels."""
    require_shared(FULL_CSV, "real NIH CSV")
    from pipeline.data.ingest import label_matrix
    from pipeline.data.nih import read_data_entry

    metadata = read_data_entry(FULL_CSV)
    return metadata, label_matrix(metadata, FULL_CSV)


# --------------------------------------------------------------------------
# A pure function of (seed, patient id), on the full CSV's patients


@pytest.mark.parametrize("seed", [0, 42])
def test_hash_split_of_a_patient_ignores_the_other_patients(full_csv, seed):
    metadata, _ = full_csv
    ids = metadata["patient_id"]
    everyone = assign_hash_splits(ids, RATIOS, seed)
    rng = np.random.default_rng(seed)
    patients = ids.unique()
    for fraction in (0.01, 0.5, 0.98):
        kept = ids.isin(rng.choice(patients, int(fraction * len(patients)), replace=False))
        assert assign_hash_splits(ids[kept], RATIOS, seed).equals(everyone[kept]), fraction
    # images, not patients, missing: the patients they leave keep their split
    rows = np.sort(rng.choice(len(ids), len(ids) // 2, replace=False))
    assert assign_hash_splits(ids.iloc[rows], RATIOS, seed).equals(everyone.iloc[rows])
    # a superset: new made-up patients (numbers past NIH's, and text ids) in front and behind
    new = pd.Series([*range(40_000, 45_000), *(f"new-{i}" for i in range(1000))], dtype=object)
    grown = pd.concat([new.iloc[:3000], ids.astype(object), new.iloc[3000:]], ignore_index=True)
    grown_split = assign_hash_splits(grown, RATIOS, seed)
    assert grown_split.iloc[3000:3000 + len(ids)].reset_index(drop=True).equals(everyone)


def test_random_split_moves_images_when_two_percent_more_patients_come(full_csv):
    """Why random is not the default: measured, ~46% of the images move."""
    metadata, labels = full_csv
    ids = metadata["patient_id"]
    patients = ids.unique()
    newcomers = np.random.default_rng(0).choice(patients, int(len(patients) * 0.02 / 1.02), replace=False)
    before = (~ids.isin(newcomers)).to_numpy()
    after = assign_patient_splits(ids, RATIOS, 42, labels)
    moved = (assign_patient_splits(ids[before], RATIOS, 42, labels[before]) != after[before]).mean()
    assert moved > 0.2, moved
    assert assign_hash_splits(ids[before], RATIOS, 42).equals(assign_hash_splits(ids, RATIOS, 42)[before])


# --------------------------------------------------------------------------
# Ingest of a real NIH data root that grows: 200 of the 300 real PNGs, then all


def place(source: Path, target: Path) -> None:
    """A hard link where the file system allows one (no bytes copied), else a
    copy; never a symlink, which ingest refuses when it leaves the root."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@pytest.fixture(scope="module")
def growing_root_manifests(tmp_path_factory):
    """{method: (manifest with 200 images, manifest with all 300)} of one data
    root (the full CSV in Kaggle's images_001/images/ layout) that grows from
    200 of the shared subset's real PNGs to all 300."""
    require_shared(SUBSET_IMAGES, "real NIH subset images")
    require_shared(FULL_CSV, "real NIH CSV")
    pngs = sorted(SUBSET_IMAGES.glob("*.png"))
    assert len(pngs) == 300
    first = set(np.random.default_rng(7).choice(len(pngs), 200, replace=False).tolist())
    root = tmp_path_factory.mktemp("growing-nih-root")
    place(FULL_CSV, root / FULL_CSV.name)
    methods = ("hash", "random")
    manifests: dict[str, list[pd.DataFrame]] = {m: [] for m in methods}
    for batch in (first, set(range(len(pngs))) - first):
        for i in sorted(batch):
            place(pngs[i], root / "images_001" / "images" / pngs[i].name)
        for method in methods:
            manifest, report = build_manifest(root, {"method": method, **RATIOS}, seed=42)
            assert report["split_method"] == method
            manifests[method].append(manifest)
    return {m: tuple(pair) for m, pair in manifests.items()}


def splits_of_common_images(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    assert len(before) == 200 and len(after) == 300
    assert set(before["image_id"]) < set(after["image_id"])
    return before[["image_id", "split"]].merge(after[["image_id", "split"]], on="image_id", suffixes=("_200", "_300"))


def test_ingest_hash_split_keeps_every_image_in_its_split_as_the_root_grows(growing_root_manifests):
    before, after = growing_root_manifests["hash"]
    common = splits_of_common_images(before, after)
    assert len(common) == 200
    moved = common[common["split_200"] != common["split_300"]]
    assert moved.empty, moved
    assert after["split"].equals(assign_hash_splits(after["patient_id"], RATIOS, 42))  # ingest uses the hash
    assert set(after["split"]) == set(RATIOS)  # 300 patients: every split has images
    assert (after.groupby("patient_id")["split"].nunique() == 1).all()


def test_ingest_random_split_moves_images_as_the_root_grows(growing_root_manifests):
    """The same roots with method random: images present both times change
    split, so a model scored on the grown "test" split may have trained on it."""
    before, after = growing_root_manifests["random"]
    common = splits_of_common_images(before, after)
    moved = common[common["split_200"] != common["split_300"]]
    assert len(moved) > 0
    assert ((moved["split_200"] == "train") & (moved["split_300"] == "test")).any() or (
        (moved["split_200"] == "test") & (moved["split_300"] == "train")
    ).any()
