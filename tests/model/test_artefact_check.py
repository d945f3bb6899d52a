"""The artefact check's statistics (pipeline.explain.artefact_check), by
simulation: under an artefact that does not move the model, how often a
check flags any finding and how often the 95% interval covers 0; and that a
planted rise in one finding is flagged and named."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.explain.artefact_check import artefact_effect

CHECKS = 1000


def null_change(rng, films: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Changes of mean 0 (film noise plus a patient effect: a patient's two films
    move together), labels with 20% prevalence, two films per patient."""
    patients = np.arange(films) // 2
    change = rng.normal(0, 0.05, (films, len(FINDINGS))) + rng.normal(0, 0.03, (films // 2, len(FINDINGS)))[patients]
    return change, (rng.random((films, len(FINDINGS))) < 0.2).astype(int), patients


@pytest.mark.parametrize("films", [40, 300])
def test_an_artefact_that_does_not_move_the_model_is_flagged_about_5_percent_of_the_time(films):
    """1,000 null checks each: any finding flagged at most 5% plus 3 binomial
    standard errors, and each finding's 95% interval covers 0 about 95% of the
    time (93% to 97%). 40 films is the documented ward, 20 patients; the
    Bonferroni-level bootstrap this replaced flagged 18% there."""
    rng = np.random.default_rng(films)
    flagged, covered = 0, []
    for _ in range(CHECKS):
        change, labels, patients = null_change(rng, films)
        report = artefact_effect(np.zeros_like(change), change, labels, patients, FINDINGS, flips=200,
                                 seed=int(rng.integers(1 << 30)))
        entries = [e for e in report["by_finding"].values() if e["mean_change"] is not None]
        flagged += any(e["raised"] or e["lowered"] for e in entries)
        covered += [e["ci"][0] <= 0 <= e["ci"][1] for e in entries]
    assert flagged / CHECKS <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / CHECKS), f"{flagged} of {CHECKS} null checks flagged"
    assert 0.93 <= np.mean(covered) <= 0.97, np.mean(covered)


def test_a_rise_in_one_finding_is_flagged_and_named():
    rng = np.random.default_rng(5)
    change, labels, patients = null_change(rng, 120)
    target = FINDINGS.index("Pneumothorax")
    change[:, target] += 0.05
    report = artefact_effect(np.zeros_like(change), change, labels, patients, FINDINGS, flips=500, seed=1)
    entry = report["by_finding"]["Pneumothorax"]
    assert entry["raised"] and not entry["lowered"] and entry["ci"][0] > 0 and entry["p_value"] <= 0.05
    assert entry["mean_change"] == pytest.approx(change[labels[:, target] == 0, target].mean(), abs=1e-4)
    assert not any(e["raised"] or e["lowered"] for f, e in report["by_finding"].items() if f != "Pneumothorax")


def test_too_few_films_without_a_finding_give_a_reason_not_a_figure():
    rng = np.random.default_rng(2)
    change, labels, patients = null_change(rng, 40)
    labels[:, 0] = 1
    labels[:4, 0] = 0
    entry = artefact_effect(np.zeros_like(change), change, labels, patients, FINDINGS, flips=50)["by_finding"]
    assert entry[FINDINGS[0]]["mean_change"] is None and "too few films without it (n=4" in entry[FINDINGS[0]]["reason"]
