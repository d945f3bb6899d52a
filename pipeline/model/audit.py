"""Where a model fails, on the test split: by patient group and in calibration.

The evaluate stage's whole-test-set figures hide a model that fails young
women, or whose 0.7 means 0.3. This module gathers each test image's
patient, age, sex and view from the shards, optionally recalibrates the
outputs (fitted on validation), and assembles the `subgroups` and
`calibration` sections of reports/evaluate/evaluate.json
(pipeline.model.subgroups and pipeline.model.calibration hold the maths).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.core.floors import MIN_PATIENTS
from pipeline.core.labels import MAX_AGE, MIN_AGE
from pipeline.core.recalibration import served_probabilities
from pipeline.model.calibration import POOLED, calibration_report, fit_recalibration, reliability_rows
from pipeline.model.subgroups import (  # noqa: F401 - evaluate reads the defaults here
    underdiagnosis_regression,
)
from pipeline.records.dataset import shard_files
from pipeline.records.tfrecords import parse_example


def split_demographics(tfrecord_dir: Path, split: str, image_ids: list[str]) -> dict[str, np.ndarray]:
    """{"patient_id", "age", "sex", "view"}: arrays in `image_ids` order, read
    from the split's records without decoding images. A missing age (the
    records' MISSING_AGE, -1) or one outside 0..120 (NIH's 2017 CSV has 414) is
    NaN: in no age band, counted as "age unknown" by subgroup_report."""
    files = shard_files(tfrecord_dir, split)
    rows = {}
    if files:
        for record in tf.data.TFRecordDataset(files).map(parse_example):
            rows[record["image_id"].numpy().decode()] = (
                int(record["patient_id"].numpy()), int(record["age"].numpy()),
                record["sex"].numpy().decode(), record["view"].numpy().decode())
    missing = [i for i in image_ids if i not in rows]
    if missing:
        raise ValueError(f"{len(missing)} test images have no record in {tfrecord_dir} (e.g. {missing[0]})")
    patients, ages, sexes, views = zip(*(rows[i] for i in image_ids)) if image_ids else ((), (), (), ())
    ages = np.array(ages, dtype=float)
    ages[(ages < MIN_AGE) | (ages > MAX_AGE)] = np.nan
    return {"patient_id": np.array(patients), "age": ages, "sex": np.array(sexes, dtype=object),
            "view": np.array(views, dtype=object)}


def split_patient_ids(tfrecord_dir: Path, split: str) -> set[int]:
    """Every patient id in a split's records (images are not decoded)."""
    files = shard_files(tfrecord_dir, split)
    if not files:
        return set()
    return {int(record["patient_id"].numpy()) for record in tf.data.TFRecordDataset(files).map(parse_example)}


def recalibrate(method: str, val: tuple[np.ndarray, np.ndarray], test_probs: np.ndarray):
    """(description or None, val probabilities, test probabilities): `method`
    (none | platt | isotonic) fitted per finding on the validation split and
    applied to both, so that thresholds are chosen on what the model serves."""
    val_labels, val_probs = val
    if method == "none":
        return None, val_probs, test_probs
    description = fit_recalibration(method, val_labels, val_probs)
    return description, served_probabilities(val_probs, description), served_probabilities(test_probs, description)


def calibration_section(
    labels: np.ndarray, raw_probs: np.ndarray, probs: np.ndarray, method: str, n_bins: int
) -> tuple[dict, dict]:
    """(the `calibration` section, the reliability curves of `probs`): ECE per
    finding on test with equal-mass bins, and the raw outputs' ECE under
    "before" when a recalibration was applied."""
    report = calibration_report(labels, probs, n_bins)
    curves = report.pop("reliability")
    section = {"method": method, **report}
    if method != "none":
        before = calibration_report(labels, raw_probs, n_bins)
        section["before"] = {key: before[key] for key in ("ece", "mean_ece", "pooled_ece")}
    return section, curves


def reliability_tables(report: dict, curves: dict) -> tuple[list[dict], list[dict]]:
    """(every finding's reliability rows, the pooled rows): a table for the
    report folder and the pooled curve for `dvc plots`."""
    rows = reliability_rows({**report, "reliability": curves})
    return rows, [row for row in rows if row["finding"] == POOLED]


def calibration_mlflow_metrics(section: dict) -> dict[str, float]:
    # each finding's ECE: a column of the per-finding table (pipeline.model.evaluate.finding_table)
    named = {"test_mean_ece": section["mean_ece"], "test_pooled_ece": section["pooled_ece"]}
    if "before" in section:
        named["test_mean_ece_before_recalibration"] = section["before"]["mean_ece"]
    return {k: float(v) for k, v in named.items() if v is not None}


def subgroup_promotion_check(
    labels: np.ndarray, champion: tuple[np.ndarray, dict], challenger: tuple[np.ndarray, dict],
    people: dict[str, np.ndarray], min_slice_positives: int, resamples: int, seed: int,
    min_slice_patients: int = MIN_PATIENTS, subgroups: bool = True, strata: bool = False,
) -> dict:
    """underdiagnosis_regression of the challenger against the champion, each
    (probabilities, thresholds) on the same test images: in the sex and age
    slices (subgroups) and the evaluate.strata columns' strata (strata)."""
    (champion_probs, champion_thresholds), (challenger_probs, challenger_thresholds) = champion, challenger
    return underdiagnosis_regression(
        labels, champion_probs, champion_thresholds, challenger_probs, challenger_thresholds,
        people, min_slice_positives=min_slice_positives, resamples=resamples, seed=seed,
        min_slice_patients=min_slice_patients, attributes=None if subgroups else [], strata=strata,
    )
