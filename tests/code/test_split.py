import numpy as np
import pandas as pd

from pipeline.split import assign_patient_splits


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
