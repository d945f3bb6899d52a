"""The subgroup report finds a planted failure, and only that one.

The phantom can draw every finding fainter on films of women under 40
(ingest.phantom.subgroup_gap): a model trained on it misses more of their
findings, as NIH-trained models miss more findings in young women
(Seyyed-Kalantari et al., Nature Medicine 2021). The evaluate stage's
subgroup report must flag that slice's underdiagnosis, and no sex or age gap on
the same phantom without the effect."""
from __future__ import annotations

import json

import pytest

from tests.e2e.project import make_project, run

pytestmark = pytest.mark.slow

PLANTED = ("F/0-20", "F/20-40")  # ingest.phantom.subgroup_gap's slice: women under 40
SUBGROUP_RUN = {
    "ingest.phantom.n_images": 3200,
    "ingest.phantom.image_size": 256,
    "preprocess.image_size": 96,
    "train.backbone": "small_cnn",
    "train.epochs": 6,
    "train.batch_size": 16,
    # Seyyed-Kalantari's operating point: a film is called "no finding" when
    # no finding reaches its F1-optimal threshold (Youden's lower thresholds
    # call some finding on nearly every film, ill or not).
    "evaluate.threshold_method": "max_f1",
    # 40% of the patients in test (about 1,280 films), so that each sex x age
    # slice holds enough patients for a figure (evaluate.min_slice_patients)
    # and the family-wise permutation test can see a planted gap
    "ingest.split.train": 0.45,
    "ingest.split.val": 0.15,
    "ingest.split.test": 0.4,
}


def subgroup_report(tmp_path, gap: float) -> dict:
    project = make_project(tmp_path / "project", {**SUBGROUP_RUN, "ingest.phantom.subgroup_gap": gap})
    run(["dvc", "repro", "evaluate"], project)
    return json.loads((project / "reports" / "evaluate" / "evaluate.json").read_text())["subgroups"]


def underdiagnosis_gap(subgroups: dict, attribute: str) -> dict:
    return next(g for g in subgroups["gaps"] if g["attribute"] == attribute and g["metric"] == "underdiagnosis_rate")


def test_a_planted_gap_is_flagged_in_exactly_its_slice(tmp_path):
    subgroups = subgroup_report(tmp_path, gap=0.9)
    rates = {name: s["underdiagnosis_rate"] for name, s in subgroups["sex_age"].items()
             if s["underdiagnosis_rate"] is not None}
    print("underdiagnosis by sex x age:", rates, "gaps:", subgroups["gaps"])
    gap = underdiagnosis_gap(subgroups, "sex_age")
    assert gap["flagged"] and gap["high"] in PLANTED, gap
    planted = [name for name in PLANTED if name in rates]
    assert planted, f"no planted slice large enough to measure: {rates}"
    others = [name for name in rates if name not in PLANTED]
    # The planted slices' CIs lie above every other slice's rate.
    for name in planted:
        low = subgroups["sex_age"][name]["underdiagnosis_rate_ci"][0]
        assert all(low > rates[other] for other in others), (name, low, rates)


def test_without_the_effect_no_slice_is_flagged(tmp_path):
    """No sex, age or sex x age gap without the planted effect. The view
    slices differ by design (the phantom draws ill films more often AP, and
    AP films differently), so a view gap is a true one, not a false alarm."""
    subgroups = subgroup_report(tmp_path, gap=0.0)
    print("gaps:", subgroups["gaps"])
    flagged = [g for g in subgroups["gaps"] if g["metric"] == "underdiagnosis_rate" and g["flagged"]
               and g["attribute"] in ("sex", "age", "sex_age")]
    assert not flagged, flagged
