"""Patient-wise splits: no patient's images ever fall in two splits.

Three methods, chosen by params.yaml's `ingest.split.method`:

  hash      (recommended) a patient's split is a pure function of (seed,
            patient id): a stable hash of f"{seed}:{patient_id}" mapped to a
            uniform number in [0, 1), cut at the cumulative ratios (TFX
            ExampleGen's hash buckets; see assign_hash_splits). Not
            stratified: on NIH's full CSV (70/15/15) a finding's prevalence in
            a split is typically within ~1 point of the overall (at most ~2.6
            over 200 seeds; 1.6 at seed 42), and a split's image share within
            ~1 point of its ratio.
  random    seeded and stratified: every split gets close to its share of the
            images *and* of each finding's positives (within ~0.05 points on
            the full CSV; see assign_patient_splits). Deterministic by seed,
            but only for the same set of images.
  official  NIH's own split: the images in the data root's test_list.txt are
            the test split; val is carved patient-wise out of
            train_val_list.txt by val / (train + val), with the hash buckets
            (assign_official_splits' val_method="random" restores the older
            stratified carve), so results compare with published numbers on
            NIH's test set. The `test` ratio is not used.

Stable under growth (adding images or patients to the data root never moves
an image already there to another split; removing some moves no one else):

  hash      yes, by construction.
  official  yes: test is NIH's fixed list; the val carve is the hash.
  random    NO. The greedy stratification places every patient relative to
            all the others, so one more patient can move many: a real NIH
            root grown from 200 to 300 images moved 87 of the 200 (38 between
            train and test); 2% more patients on the full CSV move ~46% of
            the images (tests/data/test_split_stability.py). A "test" split
            re-made after growth then holds an old model's training images.
            Keep it only to reproduce runs made with it.

Stratification (random) is done on patients, not images, because a patient's
images must stay together; "No Finding" counts as one more label so normal
images are spread by the ratios too.
"""
from __future__ import annotations

import hashlib
from collections.abc import Collection

import numpy as np
import pandas as pd

from pipeline.core.labels import SPLITS
from pipeline.core.settings import SPLIT_METHODS

DEFAULT_METHOD = "random"  # when ingest.split has no `method`: what older params files were split with
MAX_NAMED = 5  # images or patients named in an error message


class SplitError(ValueError):
    """Split settings or official split lists that cannot be applied."""


def split_settings(split: dict) -> tuple[str, dict[str, float]]:
    """The method and the ratios from params.yaml's `ingest.split` section
    (`method` defaults to random, so older params files keep their splits)."""
    method = split.get("method", DEFAULT_METHOD)
    if method not in SPLIT_METHODS:
        raise SplitError(f"ingest.split.method must be one of {', '.join(SPLIT_METHODS)}, got {method!r}")
    return method, {s: float(split.get(s) or 0) for s in SPLITS}


def _normalised(ratios: dict[str, float]) -> tuple[list[str], np.ndarray]:
    names = [s for s in SPLITS if ratios.get(s, 0) > 0]
    weights = np.array([float(ratios[s]) for s in names])
    if any(float(ratios.get(s, 0)) < 0 for s in SPLITS) or len(names) == 0:
        raise SplitError(f"split ratios must be non-negative and not all zero: {ratios}")
    return names, weights / weights.sum()


def _label_matrix(labels: pd.DataFrame | np.ndarray | None, rows: int) -> np.ndarray:
    """0/1 per image and label, plus a last "No Finding" column (set where no
    finding is), so every image carries at least one label. Without labels,
    every image is "No Finding" and the split balances image counts only."""
    if labels is None:
        return np.ones((rows, 1), dtype=np.int64)
    hot = (np.asarray(labels, dtype=np.int64) > 0).astype(np.int64)
    if hot.shape[0] != rows:
        raise SplitError(f"labels have {hot.shape[0]} rows, patient ids {rows}")
    return np.column_stack([hot, (hot.sum(axis=1) == 0).astype(np.int64)])


def _visit_order(counts: np.ndarray, seed: int) -> np.ndarray:
    """Patients with the rarest label first (seeded shuffle among equally rare
    ones): they are the hardest to place well, so they go while every split
    still has room for them; plain "No Finding" patients come last and even
    out the image counts."""
    totals = counts.sum(axis=0).astype(float)
    rarest_total = np.where(counts > 0, totals[None, :], np.inf).min(axis=1)
    shuffle = np.random.default_rng(seed).permutation(len(counts))
    return np.lexsort((shuffle, rarest_total))


def assign_patient_splits(
    patient_ids: pd.Series,
    ratios: dict[str, float],
    seed: int,
    labels: pd.DataFrame | np.ndarray | None = None,
) -> pd.Series:
    """Split name per row, patient-wise, close to `ratios` in image counts and,
    given `labels` (one 0/1 column per finding, rows aligned with
    patient_ids), in each finding's positives.

    Greedy iterative stratification over patients: patients are visited
    rarest label first; each goes to the split with the largest remaining
    need for its labels (per label, the fraction of the split's target not
    yet met; averaged over the patient's labels weighted by its images of
    each over the label's total, so rare findings and big patients weigh
    most), ties broken by the largest image-count deficit, and never to a
    split already at its image share while another is below it. Until every
    split has a patient, only empty splits are candidates, so every split
    gets one when there are enough patients. Deterministic by seed.

    On NIH's full CSV (70/15/15) every finding's prevalence in every split is
    within about 0.05 points of the overall, against ~0.9 for a split that
    balances image counts only.

    Not stable under growth: one more patient can move many others (see the
    module docstring).
    """
    names, weights = _normalised(ratios)
    codes, patients = pd.factorize(patient_ids.reset_index(drop=True), sort=True)
    if (codes < 0).any():
        raise SplitError("patient ids must not be null")
    hot = _label_matrix(labels, len(codes))
    hot = hot[:, hot.sum(axis=0) > 0]  # a label nobody has sets no target
    counts = np.zeros((len(patients), hot.shape[1]), dtype=np.int64)
    np.add.at(counts, codes, hot)
    images = np.bincount(codes, minlength=len(patients))
    totals = counts.sum(axis=0)
    label_weight = counts / totals
    label_weight /= label_weight.sum(axis=1, keepdims=True)

    label_targets = weights[:, None] * totals[None, :]  # split x label
    image_targets = weights * images.sum()
    label_done = np.zeros_like(label_targets)
    image_done = np.zeros(len(names))
    patients_in = np.zeros(len(names), dtype=np.int64)
    choice = np.empty(len(patients), dtype=np.int64)
    for p in _visit_order(counts, seed):
        need = (1.0 - label_done / label_targets) @ label_weight[p]
        deficit = image_targets - image_done
        allowed = patients_in == 0 if (patients_in == 0).any() else deficit > 0
        if not allowed.any():
            allowed = np.ones(len(names), dtype=bool)
        # lexsort sorts by the last key first: allowed, then most need, then most deficit
        best = np.lexsort((-deficit, -np.round(need, 9), ~allowed))[0]
        choice[p] = best
        label_done[best] += counts[p]
        image_done[best] += images[p]
        patients_in[best] += 1
    split_of_patient = np.array(names, dtype=object)[choice]
    return pd.Series(split_of_patient[codes], index=patient_ids.index, dtype="string")


HASH_BITS = 53  # of the digest kept: exactly representable in a float64 in [0, 1)


def patient_hash_units(patient_ids: pd.Series, seed: int) -> np.ndarray:
    """Per row, the patient's number in [0, 1): the first 64 bits of
    blake2b(f"{seed}:{patient_id}") (its top 53 bits over 2**53). A pure
    function of (seed, patient id), the same on every machine and Python
    (unlike the salted built-in hash()). Ids are hashed as text: an integer
    id (1, np.int64(1), 1.0) as its decimal digits, so 1 and "1" agree but
    "0001" does not."""
    codes, patients = pd.factorize(patient_ids.reset_index(drop=True))
    if (codes < 0).any():
        raise SplitError("patient ids must not be null")
    units = np.empty(len(patients), dtype=np.float64)
    for i, patient in enumerate(patients):
        digest = hashlib.blake2b(f"{int(seed)}:{_id_text(patient)}".encode(), digest_size=8).digest()
        units[i] = (int.from_bytes(digest, "big") >> (64 - HASH_BITS)) / 2.0**HASH_BITS
    return units[codes]


def _id_text(patient) -> str:
    if isinstance(patient, (bool, np.bool_)):
        return str(patient)
    if isinstance(patient, (int, np.integer)):
        return str(int(patient))
    if isinstance(patient, (float, np.floating)) and float(patient).is_integer():
        return str(int(patient))
    return str(patient)


def assign_hash_splits(patient_ids: pd.Series, ratios: dict[str, float], seed: int) -> pd.Series:
    """Split name per row, patient-wise, by hash buckets: the patient's number
    in [0, 1) (patient_hash_units) cut at the cumulative ratios in train, val,
    test order (70/15/15: [0, .70) train, [.70, .85) val, [.85, 1) test).

    A patient's split depends on nothing but (seed, patient id, ratios):
    adding images or patients never moves one already there, and removing
    some moves no one else. Changing the ratios moves only patients whose
    number crosses a moved cut. Not stratified: each split's image share and
    finding prevalences are those of a random sample of patients (on NIH's
    full CSV, within ~1 point of the ratios and the overall prevalences;
    see the module docstring), and with few patients a split can be empty.
    """
    names, weights = _normalised(ratios)
    cuts = np.cumsum(weights)
    cuts[-1] = 1.0  # no rounding gap below 1
    units = patient_hash_units(patient_ids, seed)
    bucket = np.minimum(np.searchsorted(cuts, units, side="right"), len(names) - 1)
    return pd.Series(np.array(names, dtype=object)[bucket], index=patient_ids.index, dtype="string")


def assign_splits_by_method(
    method: str,
    patient_ids: pd.Series,
    ratios: dict[str, float],
    seed: int,
    labels: pd.DataFrame | np.ndarray | None = None,
) -> pd.Series:
    """Split name per row by `method`: hash (assign_hash_splits; labels are
    not used) or random (assign_patient_splits, stratified on labels). The
    official method needs NIH's lists: call assign_official_splits."""
    if method == "hash":
        return assign_hash_splits(patient_ids, ratios, seed)
    if method == "random":
        return assign_patient_splits(patient_ids, dict(ratios), seed, labels)
    if method == "official":
        raise SplitError("the official split needs NIH's test and train_val lists: use assign_official_splits")
    raise SplitError(f"split method must be one of {', '.join(SPLIT_METHODS)}, got {method!r}")


def assign_official_splits(
    image_ids: pd.Series,
    patient_ids: pd.Series,
    test_ids: Collection[str],
    train_val_ids: Collection[str],
    ratios: dict[str, float],
    seed: int,
    labels: pd.DataFrame | np.ndarray | None = None,
    list_names: tuple[str, str] = ("test_list.txt", "train_val_list.txt"),
    val_method: str = "hash",
) -> pd.Series:
    """NIH's official split: test = the images in test_list.txt; the images in
    train_val_list.txt go to train and val patient-wise by the train:val ratio.

    val_method: how val is carved out of train_val_list.txt: hash (default;
    stable under growth, see assign_hash_splits) or random (stratified by
    `labels`, as before; not stable, for reproducing older official runs).

    An image in neither list, or in both, or a patient with images in both, is
    an error naming them: an "official" split that quietly moved images would
    no longer compare with NIH's test set.
    """
    if val_method not in ("hash", "random"):
        raise SplitError(f"val_method must be hash or random, got {val_method!r}")
    test_name, train_val_name = list_names
    in_test = image_ids.isin(set(test_ids)).to_numpy()
    in_train_val = image_ids.isin(set(train_val_ids)).to_numpy()
    _fail_on(image_ids[in_test & in_train_val], f"are in both {test_name} and {train_val_name}")
    _fail_on(image_ids[~in_test & ~in_train_val], f"are in neither {test_name} nor {train_val_name}")
    crossing = sorted(set(patient_ids[in_test]) & set(patient_ids[in_train_val]))
    if crossing:
        raise SplitError(
            f"{len(crossing)} patient(s) have images in both {test_name} and {train_val_name}, "
            f"e.g. patient_id {', '.join(str(p) for p in crossing[:MAX_NAMED])}"
        )
    split = pd.Series("test", index=image_ids.index, dtype="string")
    train_val_ratios = {"train": ratios.get("train", 0), "val": ratios.get("val", 0)}
    if in_train_val.any() and val_method == "hash":
        split[in_train_val] = assign_hash_splits(patient_ids[in_train_val], train_val_ratios, seed)
    elif in_train_val.any():
        hot = None if labels is None else np.asarray(labels)[in_train_val]
        split[in_train_val] = assign_patient_splits(patient_ids[in_train_val], train_val_ratios, seed, hot)
    return split


def _fail_on(images: pd.Series, problem: str) -> None:
    if len(images):
        named = ", ".join(images.iloc[:MAX_NAMED])
        more = f" (+{len(images) - MAX_NAMED} more)" if len(images) > MAX_NAMED else ""
        raise SplitError(f"{len(images)} image(s) {problem}: {named}{more}")
