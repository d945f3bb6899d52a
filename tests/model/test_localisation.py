"""Localisation scores on hand-made heatmaps, each result computed by hand."""
import numpy as np
import pandas as pd
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.explain.localisation import (
    detected_boxes,
    iobb,
    iobb_key,
    peak_in_box,
    score_heatmap,
    summarise,
)

THRESHOLDS = [0.1, 0.25, 0.5]


def blob_heatmap():
    """20x20: a 5x5 blob of 0.8 at rows/columns 5..9 peaking at 1.0 on (row 7,
    column 7), and a faint 4x4 patch of 0.3 at rows 14..17, columns 2..5."""
    heatmap = np.zeros((20, 20), np.float32)
    heatmap[5:10, 5:10] = 0.8
    heatmap[7, 7] = 1.0
    heatmap[14:18, 2:6] = 0.3
    return heatmap


def test_regions_above_a_fraction_of_the_maximum():
    heatmap = blob_heatmap()
    assert detected_boxes(heatmap, 0.5) == [(5.0, 5.0, 5.0, 5.0)]
    assert detected_boxes(heatmap, 0.25) == [(5.0, 5.0, 5.0, 5.0), (2.0, 14.0, 4.0, 4.0)]
    assert detected_boxes(heatmap * 0.5, 0.5) == [(5.0, 5.0, 5.0, 5.0)]  # relative to the maximum
    assert detected_boxes(np.zeros((20, 20)), 0.5) == []
    diagonal = np.eye(4)  # 8-connected: one region
    assert detected_boxes(diagonal, 0.5) == [(0.0, 0.0, 4.0, 4.0)]


def test_iobb_is_over_the_detected_area():
    assert iobb((5, 5, 5, 5), (0, 0, 20, 20)) == 1.0  # a small detection inside a big truth
    assert iobb((0, 0, 20, 20), (5, 5, 5, 5)) == 25 / 400
    assert iobb((5, 5, 5, 5), (8, 0, 10, 20)) == pytest.approx(10 / 25)
    assert iobb((5, 5, 5, 5), (10, 10, 3, 3)) == 0.0  # touching corners


@pytest.mark.parametrize(
    "truth, pointing, best, correct",
    [
        ([(4, 4, 7, 7)], True, 1.0, [True, True, True]),  # inside
        ([(8, 0, 10, 20)], False, 0.4, [True, True, False]),  # partly: 2 of 5 columns; peak at x 7.5 < 8
        ([(5, 5, 5, 1.25)], False, 0.25, [True, False, False]),  # IoBB exactly 0.25 is not > 0.25
        ([(12, 12, 5, 5)], False, 0.0, [False, False, False]),  # outside
        ([(12, 12, 5, 5), (7, 7, 1, 1)], True, 1 / 25, [False, False, False]),  # any box counts
    ],
)
def test_pointing_and_iobb_by_hand(truth, pointing, best, correct):
    scores = score_heatmap(blob_heatmap(), truth, 0.5)
    assert scores["pointing_hit"] is pointing
    assert scores["best_iobb"] == pytest.approx(best)
    assert [scores["best_iobb"] > t for t in THRESHOLDS] == correct


def test_the_faint_patch_counts_only_below_its_level():
    truth = [(2, 14, 4, 4)]
    assert score_heatmap(blob_heatmap(), truth, 0.5)["best_iobb"] == 0.0
    assert score_heatmap(blob_heatmap(), truth, 0.25)["best_iobb"] == 1.0


def test_pointing_uses_the_peak_pixel_centre():
    heatmap = np.zeros((10, 10))
    heatmap[3, 6] = 1.0  # centre (6.5, 3.5)
    assert peak_in_box(heatmap, (6.5, 3.5, 1, 1)) and peak_in_box(heatmap, (5.5, 2.5, 1, 1))
    assert not peak_in_box(heatmap, (6.6, 3, 2, 2))


def test_summary_per_finding_and_overall_next_to_random():
    scores = pd.DataFrame({
        "image_id": ["a", "b", "c"],
        "finding": ["Mass", "Mass", "Nodule"],
        "pointing_hit": [True, True, False],
        "best_iobb": [1.0, 0.4, 0.0],
        "random_pointing_hit": [False, False, True],
        "random_best_iobb": [0.2, 0.0, 0.3],
    })
    summary = summarise(scores, THRESHOLDS)
    assert summary["overall"] == {
        "n": 3,
        "pointing_game": 2 / 3, "pointing_game_random": 1 / 3,
        "iobb_0.1": 2 / 3, "iobb_0.1_random": 2 / 3,
        "iobb_0.25": 2 / 3, "iobb_0.25_random": 1 / 3,
        "iobb_0.5": 1 / 3, "iobb_0.5_random": 0.0,
    }
    assert list(summary["per_finding"]) == list(FINDINGS)
    mass = summary["per_finding"]["Mass"]
    assert mass["n"] == 2 and mass["pointing_game"] == 1.0 and mass["iobb_0.5"] == 0.5
    assert mass["pointing_game_random"] == 0.0 and mass["iobb_0.1_random"] == 0.5
    empty = summary["per_finding"]["Hernia"]
    assert empty["n"] == 0 and set(empty.values()) == {0, None}
    assert iobb_key(0.25) == "iobb_0.25"


def test_a_group_below_the_floor_has_its_reason_not_a_rate():
    # One Nodule film whose peak hits its box is not a pointing game of 1.00.
    scores = pd.DataFrame({"image_id": ["a", "b", "c"], "finding": ["Mass", "Mass", "Nodule"],
                           "pointing_hit": [True, False, True], "best_iobb": [1.0, 0.4, 0.9],
                           "random_pointing_hit": [False, False, True], "random_best_iobb": [0.2, 0.0, 0.3]})
    summary = summarise(scores, THRESHOLDS, min_images=2)
    nodule = summary["per_finding"]["Nodule"]
    assert nodule["n"] == 1 and nodule["reason"] == "too few boxed films (n=1)"
    assert [value for key, value in nodule.items() if key not in ("n", "reason")] == [None] * 8
    mass = summary["per_finding"]["Mass"]
    assert "reason" not in mass and mass["pointing_game"] == 0.5 and mass["iobb_0.5"] == 0.5
    assert "reason" not in summary["per_finding"]["Hernia"]  # no boxed film: nothing to be too few of
    assert summary["overall"]["pointing_game"] == 2 / 3
    assert summarise(scores, THRESHOLDS, min_images=4)["overall"] == {
        "n": 3, **{key: None for key in summary["overall"] if key != "n"}, "reason": "too few boxed films (n=3)"}
