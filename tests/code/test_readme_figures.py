"""The README's figures are the committed default run's, not typed by hand.

`make run` rewrites metrics/*.json (committed, with dvc.lock); a README that
quotes other numbers fails here, so the two cannot drift apart."""
from __future__ import annotations

import json
import re

from tests.conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def committed(stage: str) -> dict:
    return json.loads((PROJECT_ROOT / "metrics" / f"{stage}.json").read_text())


def quoted(pattern: str) -> tuple[str, ...]:
    found = re.search(pattern, " ".join(README.split()))
    assert found, f"README no longer has a sentence matching {pattern!r}"
    return found.groups()


def test_mean_auc_and_its_interval():
    auc, low, high = quoted(r"mean ROC AUC of (\d\.\d\d) \(95% CI (\d\.\d\d)-(\d\.\d\d)\)")
    evaluate = committed("evaluate")
    assert (auc, low, high) == tuple(f"{evaluate[k]:.2f}" for k in ("mean_auc", "auc_ci_low", "auc_ci_high"))


def test_calibration_error():
    (ece,) = quoted(r"expected calibration error of (\d\.\d\d)")
    assert ece == f"{committed('evaluate')['mean_ece']:.2f}"


def test_pointing_game_against_a_random_map():
    game, chance = quoted(r"for (\d+)% of boxed findings against (\d+)% for a random map")
    explain = committed("explain")
    assert (game, chance) == (f"{100 * explain['pointing_game']:.0f}", f"{100 * explain['pointing_random']:.0f}")
