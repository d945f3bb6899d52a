"""Patient-wise splits: stratified random and NIH's official split."""
import numpy as np
import pandas as pd
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.data.split import SplitError, assign_official_splits, assign_patient_splits, split_settings


def patients(n_patients=200, seed=1):
    rng = np.random.default_rng(seed)
    return pd.Series(np.repeat(np.arange(n_patients), rng.integers(1, 6, n_patients)))


def test_no_patient_in_two_splits_and_ratios_close():
    ids = patients()
    split = assign_patient_splits(ids, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=3)
    assert (pd.DataFrame({"p": ids, "s": split}).groupby("p")["s"].nunique() == 1).all()
    shares = split.value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.03 and abs(shares["val"] - 0.15) < 0.03


def test_deterministic_by_seed():
    ids = patients()
    ratios = {"train": 0.7, "val": 0.15, "test": 0.15}
    first = assign_patient_splits(ids, ratios, seed=5)
    assert first.equals(assign_patient_splits(ids, ratios, seed=5))
    assert not first.equals(assign_patient_splits(ids, ratios, seed=6))


def test_every_split_gets_a_patient_when_tiny():
    split = assign_patient_splits(pd.Series([1, 1, 2, 3, 3, 3]), {"train": 0.8, "val": 0.1, "test": 0.1}, 0)
    assert set(split) == {"train", "val", "test"}


# --------------------------------------------------------------------------
# Stratification, methods, the official split

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


def labelled_patients(n_patients=400, seed=2):
    """Patients with 1-5 images; findings at NIH-like, very unequal prevalences."""
    rng = np.random.default_rng(seed)
    ids = pd.Series(np.repeat(np.arange(n_patients), rng.integers(1, 6, n_patients)))
    prevalence = np.linspace(0.01, 0.2, len(FINDINGS))
    labels = pd.DataFrame((rng.random((len(ids), len(FINDINGS))) < prevalence).astype(int), columns=FINDINGS)
    return ids, labels


def worst_share_error(split, labels):
    """Largest |share of a finding's positives in a split - the split's ratio|."""
    positives = labels.groupby(split.to_numpy()).sum() / labels.sum()
    return max(abs(positives.loc[s] - r).max() for s, r in RATIOS.items())


def test_stratified_split_spreads_rare_findings_by_the_ratios():
    ids, labels = labelled_patients()
    stratified = assign_patient_splits(ids, RATIOS, seed=0, labels=labels)
    plain = assign_patient_splits(ids, RATIOS, seed=0)
    assert (pd.DataFrame({"p": ids, "s": stratified}).groupby("p")["s"].nunique() == 1).all()
    assert worst_share_error(stratified, labels) < 0.05
    assert worst_share_error(stratified, labels) < worst_share_error(plain, labels)
    shares = stratified.value_counts(normalize=True)
    assert all(abs(shares[s] - r) < 0.02 for s, r in RATIOS.items())
    assert stratified.equals(assign_patient_splits(ids, RATIOS, seed=0, labels=labels))


def test_split_settings():
    assert split_settings(dict(RATIOS)) == ("random", RATIOS)
    assert split_settings({"method": "official", **RATIOS})[0] == "official"
    with pytest.raises(SplitError, match="ingest.split.method must be one of random, official, got 'kfold'"):
        split_settings({"method": "kfold", **RATIOS})


def test_official_split_errors_name_images_and_patients():
    images = pd.Series(["00000001_000.png", "00000001_001.png", "00000002_000.png"])
    patients = pd.Series([1, 1, 2])
    with pytest.raises(SplitError, match="1 image\\(s\\) are in both test_list.txt and train_val_list.txt: "
                                         "00000002_000.png"):
        assign_official_splits(images, patients, ["00000002_000.png"], list(images), RATIOS, 0)
    with pytest.raises(SplitError, match="1 patient\\(s\\) have images in both .* patient_id 1"):
        assign_official_splits(images, patients, ["00000001_000.png"], list(images[1:]), RATIOS, 0)


# --------------------------------------------------------------------------
# The real full NIH CSV (112,120 images, 30,805 patients): metadata only


@pytest.fixture(scope="module")
def full_csv():
    from tests.conftest import NIH_SUBSET, require_shared

    path = NIH_SUBSET / "Data_Entry_2017_v2020.csv.gz"
    require_shared(path, "real NIH CSV")
    from pipeline.data.ingest import label_matrix
    from pipeline.data.nih import read_data_entry, read_official_lists

    metadata = read_data_entry(path)
    return metadata, label_matrix(metadata, path), read_official_lists(NIH_SUBSET)


def assert_patient_wise(metadata, split):
    assert (pd.DataFrame({"p": metadata["patient_id"], "s": split}).groupby("p")["s"].nunique() == 1).all()


def max_prevalence_gap(labels, split):
    """Largest |prevalence of a finding in a split - its overall prevalence|, in points."""
    return 100 * (labels.groupby(split.to_numpy()).mean() - labels.mean()).abs().to_numpy().max()


@pytest.mark.parametrize("seed", [0, 42])
def test_real_full_csv_random_split(full_csv, seed):
    metadata, labels, _ = full_csv
    split = assign_patient_splits(metadata["patient_id"], RATIOS, seed=seed, labels=labels)
    assert_patient_wise(metadata, split)
    shares = split.value_counts(normalize=True)
    assert all(abs(shares[s] - r) < 0.005 for s, r in RATIOS.items())
    assert max_prevalence_gap(labels, split) < 0.2  # points; ~0.9 without stratification


def test_real_full_csv_official_split(full_csv):
    metadata, labels, (test_ids, train_val_ids) = full_csv
    split = assign_official_splits(
        metadata["image_id"], metadata["patient_id"], test_ids, train_val_ids, RATIOS, seed=42, labels=labels
    )
    assert_patient_wise(metadata, split)
    assert set(metadata.loc[split == "test", "image_id"]) == set(test_ids)
    assert (split == "test").sum() == len(test_ids) == 25_596
    train_val = split[split != "test"]
    assert abs((train_val == "val").mean() - 0.15 / 0.85) < 0.005
    # NIH's test set is not stratified; val is, against train+val's prevalences
    tv_labels = labels[(split != "test").to_numpy()]
    assert max_prevalence_gap(tv_labels, train_val) < 0.5
