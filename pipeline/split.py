"""Patient-wise splits: no patient's images ever fall in two splits."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.labels import SPLITS


def assign_patient_splits(
    patient_ids: pd.Series, ratios: dict[str, float], seed: int
) -> pd.Series:
    """Split label per row, patient-wise, close to `ratios` in image counts.

    Patients are visited in a seeded random order; each goes to the split
    furthest below its target share, so the result is deterministic by seed
    and every split gets a patient when there are at least three.
    """
    names = [s for s in SPLITS if ratios.get(s, 0) > 0]
    weights = np.array([float(ratios[s]) for s in names])
    if len(names) == 0 or (weights < 0).any():
        raise ValueError(f"split ratios must be non-negative and not all zero: {ratios}")
    weights = weights / weights.sum()
    counts = patient_ids.value_counts().sort_index()
    order = np.random.default_rng(seed).permutation(len(counts))
    assigned = np.zeros(len(names))
    patient_split: dict[int, str] = {}
    for position, index in enumerate(order):
        patient, n = counts.index[index], counts.iloc[index]
        if position < len(names):  # seed each split with one patient
            choice = position
        else:
            deficit = weights * (assigned.sum() + n) - assigned
            choice = int(np.argmax(deficit))
        patient_split[patient] = names[choice]
        assigned[choice] += n
    return patient_ids.map(patient_split).astype("string")
