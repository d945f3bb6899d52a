"""Calibration: equal-mass bins, ECE, reliability rows and SVG, Platt and isotonic recalibration from JSON."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from pipeline.core.labels import FINDINGS
from pipeline.model.calibration import (
    POOLED,
    apply_recalibration,
    calibration_report,
    curve_ece,
    equal_mass_bins,
    fit_recalibration,
    reliability_curve,
    reliability_rows,
    reliability_svg,
)

N_FINDINGS = len(FINDINGS)
SVG = "{http://www.w3.org/2000/svg}"


def expected_calibration_error(labels, probs, n_bins: int = 10):
    """One finding's ECE, as calibration_report computes each."""
    return curve_ece(reliability_curve(labels, probs, n_bins))


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) where each label is drawn with its probability: calibrated by construction."""
    rng = np.random.default_rng(seed)
    probs = rng.beta(1, 6, (n, N_FINDINGS))  # mostly low, as NIH findings are rare
    return (rng.random(probs.shape) < probs).astype(int), probs


def overconfident(probs: np.ndarray) -> np.ndarray:
    """The same ranking pushed towards 0 and 1: a typical overconfident network."""
    logit = np.log(probs / (1 - probs))
    return 1 / (1 + np.exp(-(3 * logit + 2)))


def test_equal_mass_bins_hold_equal_counts():
    rng = np.random.default_rng(0)
    probs = rng.beta(0.5, 5, 1000)
    assert np.bincount(equal_mass_bins(probs, 10)).tolist() == [100] * 10
    counts = np.bincount(equal_mass_bins(rng.random(1003), 10))
    assert counts.sum() == 1003 and counts.max() - counts.min() <= 1
    bins = equal_mass_bins(probs, 10)
    # bins follow the probabilities: every probability in bin k is at most every one in bin k+1
    assert all(probs[bins == k].max() <= probs[bins == k + 1].min() for k in range(9))


def test_ece_does_not_depend_on_the_order_of_tied_rows():
    """A constant 0.5 at 50% prevalence is perfectly calibrated whatever the row
    order (splitting the ties by row order gave 0.50 or 0.14)."""
    labels = np.array([0] * 50 + [1] * 50)
    probs = np.full(100, 0.5)
    assert expected_calibration_error(labels, probs) == 0.0
    assert expected_calibration_error(labels[::-1], probs) == 0.0
    rng = np.random.default_rng(3)
    tied = np.round(rng.random(500), 1)  # 11 distinct values
    outcome = (rng.random(500) < tied).astype(int)
    eces = {expected_calibration_error(outcome[order], tied[order]) for order in
            (np.arange(500), np.argsort(-tied, kind="stable"), rng.permutation(500))}
    assert len(eces) == 1


def test_reliability_curve_by_hand():
    labels = np.array([0, 0, 1, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    curve = reliability_curve(labels, probs, n_bins=2)
    assert curve == [{"bin": 0, "mean_predicted": pytest.approx(0.2), "observed_frequency": pytest.approx(1 / 3),
                      "count": 3},
                     {"bin": 1, "mean_predicted": pytest.approx(0.7), "observed_frequency": pytest.approx(2 / 3),
                      "count": 3}]
    assert expected_calibration_error(labels, probs, n_bins=2) == pytest.approx((abs(0.2 - 1 / 3)
                                                                                 + abs(0.7 - 2 / 3)) / 2)


def test_ece_near_zero_when_calibrated_and_large_when_not():
    labels, probs = calibrated(20_000, seed=1)
    report = calibration_report(labels, probs, n_bins=10)
    assert report["mean_ece"] < 0.01 and report["pooled_ece"] < 0.01
    assert all(0 <= report["ece"][f] < 0.015 for f in FINDINGS)
    skewed = calibration_report(labels, overconfident(probs), n_bins=10)
    assert skewed["mean_ece"] > 0.05
    assert set(skewed["reliability"]) == {*FINDINGS, POOLED}
    assert [p["count"] for p in skewed["reliability"]["Mass"]] == [2000] * 10


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_recalibration_lowers_ece_and_applies_from_json(method):
    val_labels, val_probs = calibrated(5_000, seed=2)
    test_labels, test_probs = calibrated(5_000, seed=3)
    val_skewed, test_skewed = overconfident(val_probs), overconfident(test_probs)
    description = fit_recalibration(method, val_labels, val_skewed)
    stored = json.loads(json.dumps(description))  # as kept with a registered model
    assert stored["method"] == method and all(stored["findings"][f]["kind"] == method for f in FINDINGS)
    fixed = apply_recalibration(stored, test_skewed)
    np.testing.assert_array_equal(fixed, apply_recalibration(description, test_skewed))
    before = calibration_report(test_labels, test_skewed)["mean_ece"]
    after = calibration_report(test_labels, fixed)["mean_ece"]
    assert before > 0.05 and after < 0.03, (before, after)
    assert fixed.min() >= 0 and fixed.max() <= 1


def test_platt_recovers_the_distortion():
    labels, probs = calibrated(8_000, seed=4)
    mapping = fit_recalibration("platt", labels, overconfident(probs))["findings"]["Atelectasis"]
    # overconfident is logit -> 3 logit + 2, so the inverse has slope 1/3 and intercept -2/3
    assert mapping["slope"] == pytest.approx(1 / 3, rel=0.1)
    assert mapping["intercept"] == pytest.approx(-2 / 3, abs=0.15)


def test_isotonic_from_json_matches_scikit_learn():
    labels, probs = calibrated(3_000, seed=5)
    skewed = overconfident(probs)
    stored = json.loads(json.dumps(fit_recalibration("isotonic", labels, skewed)))
    fresh = np.r_[skewed[:50, 0], 0.0, 1.0]  # inside and beyond the fitted range
    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(skewed[:, 0], labels[:, 0])
    values = np.zeros((len(fresh), N_FINDINGS))
    values[:, 0] = fresh
    np.testing.assert_allclose(apply_recalibration(stored, values)[:, 0], model.predict(fresh), atol=1e-12)


def test_findings_without_positives_stay_as_they_are():
    labels, probs = calibrated(500, seed=6)
    labels[:, FINDINGS.index("Hernia")] = 0
    description = fit_recalibration("platt", labels, probs)
    hernia = description["findings"]["Hernia"]
    assert hernia["kind"] == "identity" and "no positives" in hernia["note"]
    out = apply_recalibration(description, probs)
    np.testing.assert_array_equal(out[:, FINDINGS.index("Hernia")], probs[:, FINDINGS.index("Hernia")])
    none = fit_recalibration("none", labels, probs)
    np.testing.assert_array_equal(apply_recalibration(none, probs), probs)
    assert apply_recalibration(none, probs[0]).shape == (N_FINDINGS,)
    with pytest.raises(ValueError, match="platt"):
        fit_recalibration("temperature", labels, probs)


def test_rows_and_svg():
    labels, probs = calibrated(2_000, seed=7)
    report = calibration_report(labels, overconfident(probs), n_bins=5)
    rows = reliability_rows(report)
    assert len(rows) == 5 * (N_FINDINGS + 1)
    assert set(rows[0]) == {"finding", "bin", "mean_predicted", "observed_frequency", "count"}
    curves = {POOLED: report["reliability"][POOLED], "Mass <&> \"x\"": report["reliability"]["Mass"]}
    svg = reliability_svg(curves, title="Calibration & <test>")
    root = ET.fromstring(svg)  # well-formed XML, names escaped
    assert root.tag == f"{SVG}svg"
    assert len(root.findall(f"{SVG}polyline")) == 2 and len(root.findall(f"{SVG}circle")) == 10
    assert root.find(f"{SVG}title").text == "Calibration & <test>"
    assert ET.fromstring(reliability_svg({}))  # an empty diagram is still an SVG
