"""The explain stage's parts: example selection, localisation targets and scores,
gallery entries and the gallery page, on hand-made data and a tiny real model."""
import base64
import dataclasses
from html.parser import HTMLParser

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import ConfigError
from pipeline.core.labels import FINDINGS
from pipeline.explain.explanations import (
    CAPTION_LINE_PX,
    CAPTION_MIN_WIDTH,
    caption_lines,
    examples_table,
    explain_examples,
    explain_metrics,
    localisation_table,
    localisation_targets,
    localise,
    mlflow_metrics,
    select_examples,
    summary_line,
    truth_boxes,
)
from pipeline.explain.gallery import render_gallery_html
from pipeline.explain.localisation import summarise
from tests.conftest import section_settings
from tests.model.test_gradcam import bright_spot_model, spot_images

SETTINGS = section_settings("explain", method="gradcam", layer=None, top_k=2, false_positives=1, false_negatives=1,
                            heatmap_threshold=0.5,
                            iobb_thresholds=[0.1, 0.25, 0.5], max_localisation_images=10, batch_size=2)


def predictions_table(rows: dict[str, dict[str, tuple[int, float]]]) -> pd.DataFrame:
    """{image_id: {finding: (label, prob)}}, every other finding (0, 0.0)."""
    table = []
    for image_id, values in rows.items():
        row = {"image_id": image_id}
        row.update({f"label_{f}": values.get(f, (0, 0.0))[0] for f in FINDINGS})
        row.update({f"prob_{f}": values.get(f, (0, 0.0))[1] for f in FINDINGS})
        table.append(row)
    return pd.DataFrame(table)


def test_missed_counts_are_each_findings_positives_below_its_threshold():
    from pipeline.explain.explanations import missed_counts

    predictions = predictions_table({"a.png": {"Mass": (1, 0.9)}, "b.png": {"Mass": (1, 0.3)},
                                     "c.png": {"Mass": (0, 0.1), "Nodule": (1, 0.5)}})
    counts = missed_counts(predictions, {f: 0.5 for f in FINDINGS})
    assert counts["Mass"] == {"missed": 1, "positives": 2}
    assert counts["Nodule"] == {"missed": 0, "positives": 1}  # at the threshold is found
    assert counts["Hernia"] == {"missed": 0, "positives": 0} and list(counts) == list(FINDINGS)


def test_true_and_false_positives_and_missed_films_at_the_threshold():
    predictions = predictions_table({
        "a.png": {"Mass": (1, 0.9)},
        "b.png": {"Mass": (1, 0.7)},
        "g.png": {"Mass": (1, 0.7)},  # ties with b: image_id decides
        "c.png": {"Mass": (1, 0.4)},  # below the threshold: a false negative
        "h.png": {"Mass": (1, 0.2)},  # missed with a lower score: shown first
        "d.png": {"Mass": (0, 0.95)},
        "e.png": {"Mass": (0, 0.6)},
        "f.png": {"Mass": (0, 0.1)},
    })
    thresholds = {f: 0.5 for f in FINDINGS} | {"Hernia": 0.0}
    examples = select_examples(predictions, thresholds, top_k=2, false_positives=1, false_negatives=1)
    assert examples.to_dict("records") == [
        {"image_id": "a.png", "finding": "Hernia", "kind": "FP", "probability": 0.0, "threshold": 0.0},
        {"image_id": "a.png", "finding": "Mass", "kind": "TP", "probability": 0.9, "threshold": 0.5},
        {"image_id": "b.png", "finding": "Mass", "kind": "TP", "probability": 0.7, "threshold": 0.5},
        {"image_id": "d.png", "finding": "Mass", "kind": "FP", "probability": 0.95, "threshold": 0.5},
        {"image_id": "h.png", "finding": "Mass", "kind": "FN", "probability": 0.2, "threshold": 0.5},
    ]
    missed = select_examples(predictions, thresholds, 0, 0, false_negatives=5)
    assert list(zip(missed["image_id"], missed["kind"])) == [("h.png", "FN"), ("c.png", "FN")]  # lowest first
    assert select_examples(predictions, thresholds, 0, 0, 0).empty


def test_localisation_targets_are_the_test_boxes_capped_deterministically():
    boxes = pd.DataFrame(
        [(f"{i:03d}.png", "Mass", i, 0, 4, 4) for i in range(30)] + [("005.png", "Nodule", 1, 1, 2, 2)],
        columns=["image_id", "finding", "x", "y", "w", "h"],
    )
    test_ids = {f"{i:03d}.png" for i in range(0, 30, 2)}  # 15 test images, 005 not among them
    everything = localisation_targets(boxes, test_ids, 100, seed=1)
    assert set(everything["image_id"]) == test_ids and len(everything) == 15
    capped = localisation_targets(boxes, test_ids | {"005.png"}, 5, seed=1)
    assert capped["image_id"].nunique() == 5 and set(capped["image_id"]) <= test_ids | {"005.png"}
    pd.testing.assert_frame_equal(capped, localisation_targets(boxes, test_ids | {"005.png"}, 5, seed=1))
    if "005.png" in set(capped["image_id"]):  # an image comes with all its boxes
        assert len(capped[capped["image_id"] == "005.png"]) == 2
    assert list(capped["image_id"]) == sorted(capped["image_id"])


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="explain.method is 'cam'; allowed: one of gradcam | gradcam\\+\\+"):
        section_settings("explain", method="cam")
    with pytest.raises(ConfigError, match="explain.heatmap_threshold is 0; allowed: a number in \\(0, 1\\]"):
        section_settings("explain", heatmap_threshold=0)


@pytest.fixture(scope="module")
def tiny_run():
    """A bright-spot model, three 32px test images (spots where the boxes are),
    the boxes on 64px originals, and the stage's selection."""
    images = {
        image_id: {"image": pixels.astype(np.uint8) * 255, "orig_size": (64, 64)}
        for image_id, pixels in zip(["s0.png", "s1.png", "s2.png"], spot_images([(8, 8), (20, 24), (16, 16)]))
    }
    boxes = pd.DataFrame(
        [("s0.png", "Mass", 10, 10, 12, 12), ("s1.png", "Mass", 40, 32, 16, 16),
         ("s1.png", "Nodule", 0, 0, 8, 8)],
        columns=["image_id", "finding", "x", "y", "w", "h"],
    )
    truth = truth_boxes(boxes, images, 32, "crop")
    examples = pd.DataFrame(
        [("s0.png", "Mass", "TP", 0.9, 0.5), ("s2.png", "Mass", "FP", 0.8, 0.5), ("s1.png", "Mass", "FN", 0.2, 0.5)],
        columns=["image_id", "finding", "kind", "probability", "threshold"],
    )
    settings = dataclasses.replace(SETTINGS, layer="features")
    return bright_spot_model(), images, truth, examples, settings


def test_localisation_scores_and_random_baseline(tiny_run):
    model, images, truth, _, settings = tiny_run
    assert truth[("s0.png", "Mass")] == [(5.0, 5.0, 6.0, 6.0)]
    scores = localise(model, truth, images, settings, "features", seed=3)
    assert list(zip(scores["image_id"], scores["finding"])) == sorted(truth)
    mass = scores[scores["finding"] == "Mass"]
    assert mass["pointing_hit"].all() and (mass["best_iobb"] > 0.5).all()
    nodule = scores[scores["finding"] == "Nodule"].iloc[0]
    assert not nodule["pointing_hit"] and nodule["best_iobb"] == 0.0  # the spot is far from that box
    again = localise(model, truth, images, dataclasses.replace(settings, batch_size=1), "features", seed=3)
    pd.testing.assert_frame_equal(scores, again)  # the random maps do not depend on batching
    reseeded = localise(model, truth, images, settings, "features", seed=4)
    assert not reseeded[["random_pointing_hit", "random_best_iobb"]].equals(
        scores[["random_pointing_hit", "random_best_iobb"]])
    assert scores["random_best_iobb"].between(0, 1).all()


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.links, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs)
        for name in ("href", "src", "action", "srcset"):
            if name in attrs and tag != "img":
                self.links.append(attrs[name])

    def handle_data(self, data):
        self.text.append(data)


def test_gallery_page_is_self_contained_and_complete(tiny_run):
    model, images, truth, examples, settings = tiny_run
    entries = explain_examples(model, examples, images, truth, settings, "features")
    assert [e["overlay"] for e in entries] == ["Mass_s0.png", "Mass_s2.png", "Mass_s1.png"]
    assert entries[0]["pointing_hit"] is True and entries[1]["pointing_hit"] is None  # the FP has no box
    assert entries[2]["pointing_hit"] is not None  # the missed film has its box
    for entry in entries:
        # the PNG file: the overlay above a caption band (finding, TP/FP/FN, method, score, image id)
        picture = cv2.imdecode(np.frombuffer(entry["png"], np.uint8), cv2.IMREAD_COLOR)
        band = 3 * CAPTION_LINE_PX + 4
        assert picture.shape == (32 + band, CAPTION_MIN_WIDTH, 3)
        assert picture[32:].max() == 255 and picture[:32, 32:].max() == 0  # text in the band, black padding
        kind = {"TP": "true positive", "FP": "false positive", "FN": "missed (false negative)"}[entry["kind"]]
        assert caption_lines(entry, "gradcam")[0] == f"Mass: {kind}, Grad-CAM"
        # the gallery page's copy: the overlay alone (its caption is HTML)
        assert cv2.imdecode(np.frombuffer(entry["jpeg"], np.uint8), cv2.IMREAD_COLOR).shape == (32, 32, 3)
    scores = localise(model, truth, images, settings, "features", seed=3)
    metrics = explain_metrics(settings, "features", entries, summarise(scores, settings.iobb_thresholds))
    assert metrics["gallery"] == {"true_positives": 1, "false_positives": 1, "false_negatives": 1}

    page = render_gallery_html(entries, metrics)
    parser = PageParser()
    parser.feed(page)
    assert not {"script", "link", "iframe", "object", "embed"} & set(parser.tags)
    assert "http:" not in page and "https:" not in page and "url(" not in page and "@import" not in page
    assert all(link.startswith("#") for link in parser.links)
    assert len(parser.images) == len(entries)
    for attrs, entry in zip(parser.images, entries):
        prefix = "data:image/jpeg;base64,"
        assert attrs["src"].startswith(prefix)
        embedded = base64.b64decode(attrs["src"][len(prefix):])
        assert embedded == entry["jpeg"] and cv2.imdecode(np.frombuffer(embedded, np.uint8), 1).shape[2] == 3
        assert entry["image_id"] in attrs["alt"]
    text = " ".join(parser.text)
    for finding in FINDINGS:
        assert finding in text
    assert "TP" in text and "FP" in text and "FN" in text and "threshold 0.500" in text and "best IoBB" in text
    mass = page[page.index('<h2 id="Mass">'):page.index('<h2 id="Nodule">')]
    assert [mass.index(f'class="kind {k}"') for k in ("TP", "FP", "FN")] == sorted(
        mass.index(f'class="kind {k}"') for k in ("TP", "FP", "FN"))  # a finding's cards: TP, FP, then FN
    assert render_gallery_html(entries, metrics) == page  # no timestamps: same input, same bytes
    assert "A score needs at least 10 boxed films (explain.min_localisation_images)" in page
    # a floor above the boxed films: each row says so in place of its rates, and so does the log line
    floored = explain_metrics(settings, "features", entries, summarise(scores, settings.iobb_thresholds,
                                                                       min_images=len(scores) + 1))
    table = render_gallery_html(entries, floored).split("<table>")[1].split("</table>")[0]
    assert table.count('class="too-few"') == 1 + scores["finding"].nunique() and 'class="random"' not in table
    assert f'<td colspan="4" class="too-few">too few boxed films (n={len(scores)})</td>' in table
    assert summary_line(floored) == f"no localisation scores: too few boxed films (n={len(scores)}) " \
                                    "(explain.min_localisation_images)"
    assert mlflow_metrics(floored) == {"explain_n": float(len(scores)), **{
        f"explain_gallery_{kind}": 1.0 for kind in ("true_positives", "false_positives", "false_negatives")}}

    assert 'id="synthetic"' not in page and 'id="synthetic"' not in render_gallery_html(
        entries, {**metrics, "data_source": "nih"})
    phantom = render_gallery_html(entries, {**metrics, "data_source": "phantom"})
    assert '<p class="banner" id="synthetic">These films are a synthetic phantom: these figures say nothing about ' \
           'clinical performance.</p>' in phantom
    # with the stage's counts of missed films: how many the few FN cards stand for
    counts = {f: {"missed": 0, "positives": 0} for f in FINDINGS} | {"Mass": {"missed": 4, "positives": 9},
                                                                     "Nodule": {"missed": 2, "positives": 5},
                                                                     "Edema": {"missed": 0, "positives": 1}}
    counted = render_gallery_html(entries, {**metrics, "missed": counts})
    mass = counted[counted.index('<h2 id="Mass">'):counted.index('<h2 id="Nodule">')]
    assert "Missed (score below the threshold): 4 of the 9 test films with this finding; the lowest-scoring:" in mass
    nodule = counted[counted.index('<h2 id="Nodule">'):counted.index('<h2 id="Pleural_Thickening">')]
    assert "2 of the 5 test films with this finding." in nodule
    assert "None shown (explain.false_negatives is 0)" in nodule  # no card for Nodule among the entries
    hernia = counted[counted.index('<h2 id="Hernia">'):counted.index('<h2 id="Infiltration">')]
    assert "No test film has this finding." in hernia and "No missed" not in hernia
    edema = counted[counted.index('<h2 id="Edema">'):counted.index('<h2 id="Effusion">')]
    assert "Missed (score below the threshold): 0 of the test film with this finding.</p>" in edema

    table = examples_table(entries)
    assert list(table["overlay"]) == ["Mass_s0.png", "Mass_s2.png", "Mass_s1.png"]
    assert "png" not in table and "jpeg" not in table
    named = mlflow_metrics(metrics)
    assert named["explain_n"] == 3.0 and "explain_n_Mass" not in named  # per finding: the table
    per_finding = localisation_table(metrics).set_index("finding")
    assert per_finding.loc["Mass", "n"] == 2 and "pointing_game" in per_finding.columns
    assert "Hernia" not in per_finding.index or per_finding.loc["Hernia", "n"] == 0  # undefined without boxes
    assert "pointing game" in summary_line(metrics) and "T(IoBB)>0.25" in summary_line(metrics)


def test_missed_films_of_a_flagged_stratum_get_their_own_section(tiny_run):
    """evaluate.strata's flagged groups (strata_missed.json): their missed
    films, as many as explain.top_k, with heatmaps, in a section of their own
    and not among the findings' TP/FP cards."""
    from pipeline.explain.explanations import missed_examples

    model, images, truth, examples, settings = tiny_run
    groups = [{"column": "Drain", "stratum": "0", "finding": "Mass", "image_ids": ["s1.png", "s2.png", "s0.png"],
               "sentence": "Mass sensitivity in Drain=0 is 0.200 vs 0.900 in Drain=1"}]
    predictions = pd.DataFrame({"image_id": ["s0.png", "s1.png", "s2.png"], "prob_Mass": [0.1, 0.2, 0.3]})
    missed = missed_examples(groups, predictions, {"Mass": 0.5}, per_group=2)
    assert list(missed["image_id"]) == ["s1.png", "s2.png"] and set(missed["kind"]) == {"FN"}
    assert list(missed["probability"]) == [0.2, 0.3] and list(missed["group"]) == [0, 0]
    entries = explain_examples(model, examples, images, truth, settings, "features")
    missed_entries = explain_examples(model, missed, images, truth, settings, "features")
    scores = localise(model, truth, images, settings, "features", seed=3)
    metrics = explain_metrics(settings, "features", entries, summarise(scores, settings.iobb_thresholds))
    page = render_gallery_html(entries, metrics, groups, missed_entries)
    section = page[page.index('<h2 id="strata">'):]
    assert "Mass sensitivity in Drain=0 is 0.200 vs 0.900 in Drain=1: 3 missed in Drain=0" in section
    assert section.count("<img") == 2 and section.count('class="kind FN"') == 2
    assert page.count('class="kind FN"') == 3  # and the Mass section's own lowest-scoring missed film
    assert 'href="#strata"' in page
    plain = render_gallery_html(entries, metrics)
    assert 'id="strata"' not in plain and 'href="#strata"' not in plain  # no groups, no section
