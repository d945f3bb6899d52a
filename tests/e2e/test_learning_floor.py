"""The recipe learns: the pipeline, end to end on the phantom, beats chance by
a margin, in classification and in localisation.

The default recipe (DenseNet121 at 320 px) takes about 25 minutes on 2 cores,
so this runs the same pipeline, phantom and split with the small CNN at
128 px; the committed metrics/ hold the default recipe's own figures."""
from __future__ import annotations

import json

import pytest

from tests.e2e.project import make_project, run

pytestmark = pytest.mark.slow

LEARNING = {
    "ingest.phantom.image_size": 512,
    "preprocess.image_size": 128,
    "train.backbone": "small_cnn",
    "train.epochs": 10,
    "train.batch_size": 16,
    "explain.top_k": 1,
    "explain.false_positives": 1,
    "explain.false_negatives": 1,
    # the test is whether the recipe learns, on every finding with a positive
    # test film (the reporting floor of 10 leaves one finding on 70 films)
    "evaluate.min_slice_positives": 1,
}
# Measured with this configuration (500 phantom films, seed 42, hash split,
# 70 test images; TF op determinism on, as on every CPU run): mean AUC 0.823
# (95% CI 0.762-0.854) and pointing game 0.521 against the random map's 0.055.
# With 6 epochs instead of 10 it was 0.729 and 0.137: the floors leave room
# for another CPU's arithmetic, not for a recipe that stopped learning.
MEAN_AUC_FLOOR = 0.72
POINTING_GAME_OVER_RANDOM = 2.0


def test_the_recipe_learns_on_the_phantom(tmp_path):
    """Mean test AUC above the floor; Grad-CAM's peak in the planted box at
    least twice as often as a random map's."""
    project = make_project(tmp_path / "project", LEARNING)
    run(["dvc", "repro"], project)
    evaluate = json.loads((project / "metrics" / "evaluate.json").read_text())
    explain = json.loads((project / "metrics" / "explain.json").read_text())
    assert evaluate["mean_auc"] >= MEAN_AUC_FLOOR, evaluate
    assert explain["pointing_game"] >= POINTING_GAME_OVER_RANDOM * explain["pointing_random"], explain
