"""The retrain pull request's body (pipeline.model.retrain_report) from the
reports it reads; tests/e2e/test_retrain.py runs it on a download that grew."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.labels import FINDINGS
from pipeline.data.data_change import change_lines, data_change
from pipeline.model.retrain_report import NAMED_IMAGES, pull_request_body
from tests.data.test_data_change import AFTER, BEFORE

PAGE = Path("reports/retrain/monitor/index.html")
EVALUATION = {"registered_model": {"name": "chestxray", "version": 7},
              "registry": {"version": 7, "champion": False, "reasons": ["its CI lies below -0.02"],
                           "comparison": {"champion_version": 6, "test_images": 120, "test_patients": 50,
                                          "mean_auc_diff": -0.0412, "mean_auc_diff_ci": [-0.081, -0.003]}}}


def monitor_report(verdict: str = "drift") -> dict:
    shift = {f: {"reference_mean": 0.1, "new_mean": 0.1, "difference": 0.0, "ci": [-0.01, 0.01]} for f in FINDINGS}
    shift["Mass"] = {"reference_mean": 0.1, "new_mean": 0.2, "difference": 0.1, "ci": [0.05, 0.15]}
    return {"verdict": verdict, "drift_score": 4.2, "drift_score_p": 0.001, "moved_most": ["noise", "grey_mean"],
            "films": {"profiled": 40, "given": 40}, "reference": {"films": 70},
            "model": {"uri": "models:/chestxray@champion", "version": "6"}, "probability_shift": shift}


def test_the_body_names_what_changed_the_verdict_and_the_decision():
    change = data_change(BEFORE, AFTER, "md5-of-before")
    body = pull_request_body("abc123", change, "phantom", monitor_report(), EVALUATION, PAGE)
    assert body.startswith("`make retrain` on abc123: new `dvc.lock` and metrics.")
    assert "_The data is a synthetic phantom" in body
    assert f"- {change_lines(change)[0]}" in body and f"- {change_lines(change)[1]}" in body
    assert "| train | 2 | 0 | 1 | 0 |" in body and "| test | 1 | 1 | 1 | 1 |" in body
    assert "| Mass prevalence | 25.0% | 60.0% |" in body and "| women | 50.0% | 80.0% |" in body
    assert "Added images: `e.png`, `f.png`, `c.png`." in body
    assert ("**drift: drift score 4.20 (permutation p 0.001) over 40 films against 70 reference films; moved most: "
            "noise, grey_mean** (against models:/chestxray@champion = version 6") in body
    assert "Mean probability moved (95% CI excludes 0): Mass +0.100 [+0.050, +0.150]." in body
    assert "chestxray version 7 registered as a **challenger** (the champion is unchanged): its CI lies below" in body
    assert ("Against champion version 6 on the same 120 test images of 50 patients: mean AUC difference -0.0412, "
            "paired 95% CI [-0.0810, -0.0030].") in body


def test_without_a_comparison_a_check_or_a_new_model_the_body_says_so():
    first = data_change(None, AFTER, "no earlier manifest: dvc.lock records none (the first ingest)")
    body = pull_request_body("abc123", first, "nih", {"skipped": "no images added"}, None, PAGE)
    assert "- no earlier manifest: dvc.lock records none (the first ingest)" in body and "synthetic" not in body
    assert "Not checked: no images added." in body
    assert "The evaluate stage did not run: no new model was registered." in body
    unchanged = pull_request_body("abc123", None, "nih", {"skipped": "the data is unchanged"}, EVALUATION, PAGE)
    assert "the ingest stage did not run: the data is unchanged" in unchanged


def test_many_added_images_are_counted_past_the_first_named():
    many = BEFORE.copy()
    grown = [{**AFTER.iloc[0].to_dict(), "image_id": f"n{i:03d}.png", "patient_id": 100 + i} for i in range(30)]
    import pandas as pd

    body = pull_request_body("abc", data_change(BEFORE, pd.concat([many, pd.DataFrame(grown)]), "md5"), "nih",
                             {"skipped": "x"}, None, PAGE)
    assert f"`n{NAMED_IMAGES - 1:03d}.png` and {30 - NAMED_IMAGES} more." in body
