"""The model card: one self-contained HTML page, and it renders in a real browser."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import curves, evaluation_metrics
from pipeline.core.recalibration import apply_recalibration
from pipeline.model.calibration import calibration_report, fit_recalibration
from pipeline.model.champion import operating_comparison
from pipeline.model.model_card import intended_use_section, model_card_html
from pipeline.model.model_card_sections import calibration_section, gap_sentence, subgroups_section
from pipeline.model.strata import strata_report
from pipeline.model.subgroups import subgroup_report

IMAGES = 600


def synthetic(rng):
    """Labels and probabilities with a planted sex gap: half of the F images
    (of ill and well patients alike) get low noise only, so F's ill films are
    called "no finding" far more often than M's. Ages 40-60 and 60-80, and 8
    images (4 patients) aged 85: an 80+ slice too small for any figure."""
    labels = (rng.random((IMAGES, 14)) < 0.1).astype(int)
    probs = np.clip(labels * 0.6 + rng.random((IMAGES, 14)) * 0.45, 0, 1)
    patients = np.arange(IMAGES) // 2
    sexes = np.where(patients % 2 == 0, "F", "M")
    missed = (sexes == "F") & (rng.random(IMAGES) < 0.5)
    probs[missed] = rng.random((int(missed.sum()), 14)) * 0.3
    ages = np.where(patients % 3 == 0, 45.0, 65.0)
    ages[:8] = 85
    views = np.where(np.arange(IMAGES) % 2 == 0, "PA", "AP")
    return labels, probs, (patients, ages, sexes, views)


def audit(labels, probs, people, thresholds):
    """metrics["subgroups"], metrics["calibration"] and the reliability curves, as
    the evaluate stage builds them (Platt recalibration, fitted here on the same images)."""
    subgroups = subgroup_report(labels, probs, thresholds, dict(zip(("patient_id", "age", "sex", "view"), people)),
                                resamples=200, seed=0)
    description = fit_recalibration("platt", labels, probs)
    after = calibration_report(labels, apply_recalibration(description, probs), n_bins=10)
    before = calibration_report(labels, probs, n_bins=10)
    reliability = after.pop("reliability")
    calibration = {"method": "platt", **after,
                   "before": {key: before[key] for key in ("ece", "mean_ece", "pooled_ece")}}
    return subgroups, calibration, reliability


def card(tmp_path, previous=True, audited=True):
    rng = np.random.default_rng(0)
    labels, probs, people = synthetic(rng)
    metrics = evaluation_metrics((labels, probs), (labels, probs), "youden", resamples=50, seed=0)
    comparison = None
    if previous:
        from pipeline.model.selection import paired_auc_comparison

        champion_probs = np.clip(probs + rng.normal(0, 0.2, probs.shape), 0, 1)
        comparison = paired_auc_comparison(labels, probs, champion_probs, people[0], 50, seed=0)
        comparison.update(champion_version=1, champion_mean_auc=0.9, champion_auc={f: 0.9 for f in FINDINGS},
                          **operating_comparison(labels, (champion_probs, {f: 0.5 for f in FINDINGS}),
                                                 (probs, metrics["thresholds"]), min_positives=10))
    registry = {"version": 2, "champion": False, "rule": "refused: a finding's AUC difference CI lies below",
                "reasons": ["Mass AUC drops by 0.1"], "comparison": comparison}
    summary = {"split_sizes": {"train": 1000, "val": 400, "test": IMAGES}, "data_hash": "abc",
               "git_commit": "c0ffee", "test_manifest": "m", "backbone": "small_cnn", "image_size": 64, "fit": "crop",
               "data_source": "phantom"}
    reliability = None
    if audited:
        metrics["subgroups"], metrics["calibration"], reliability = audit(labels, probs, people, metrics["thresholds"])
        # an added column that follows the planted gap (each patient's site): its strata differ
        site = np.where(people[2] == "F", "north", "south")
        metrics["strata"] = strata_report(labels, probs, metrics["thresholds"], people[0], {"Site": list(site)},
                                          resamples=200, seed=0)
    path = tmp_path / "model_card.html"
    roc = curves(labels, probs)["roc"]
    if audited:
        page = model_card_html("chestxray", summary, metrics, roc, registry, reliability=reliability)
    else:  # an older caller: no reliability argument, metrics without subgroups or calibration
        page = model_card_html("chestxray", summary, metrics, roc, registry)
    path.write_text(page)
    return path


def section(page: str, name: str) -> str:
    start = page.index(f'<section id="{name}">')
    return page[start:page.index("</section>", start)]


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    return card(tmp_path_factory.mktemp("card")).read_text()


def test_card_is_self_contained_and_complete(page, tmp_path):
    parsed = Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags and not parsed.urls
    assert "http" not in page and "@import" not in page
    roc = page[page.index("<h2>ROC curves"):page.index('<section id="calibration">')]
    assert roc.count("<svg") == len(FINDINGS) and roc.count("<polyline") == len(FINDINGS)
    assert all(f in page for f in FINDINGS)
    assert "stays challenger" in page and "Mass AUC drops by 0.1" in page and "champion v1 AUC" in page
    assert "95% CI (paired, by patient)" in page and f"{IMAGES} test images of {IMAGES // 2} patients" in page
    # sections in order: findings, ROC, calibration, subgroups, champion
    order = [page.index(h) for h in ("<h2>Per finding", "<h2>ROC curves", "<h2>Calibration", "<h2>Subgroups",
                                     "<h2>Champion comparison")]
    assert order == sorted(order)
    older = card(tmp_path, previous=False, audited=False).read_text()
    assert "champion v1" not in older and "<h2>Subgroups" not in older and "<h2>Calibration" not in older
    assert older.count("<svg") == len(FINDINGS)


def test_card_says_what_the_data_is_what_the_model_is_for_and_reads_its_plots(page):
    assert '<p class="banner" id="synthetic">The films behind this model are a synthetic phantom: these ' \
           "figures say nothing about clinical performance. It was trained and tested on films the project " \
           "draws itself" in page
    assert page.index('id="synthetic"') < page.index("<h2>Per finding")
    assert "<h2>Intended use and limitations</h2>" in page and "Not a medical device" in page
    roc = page[page.index("<h2>ROC curves"):page.index('<section id="calibration">')]
    assert roc.count("1 − specificity") == len(FINDINGS) and roc.count(">sensitivity</text>") == len(FINDINGS)
    assert roc.count("<circle") == len(FINDINGS) and roc.count("operating point: sensitivity") == len(FINDINGS)
    assert re.search(r"<figcaption>Mass: AUC \d\.\d{3}</figcaption>", roc)
    champion = page[page.index("<h2>Champion comparison"):]
    assert '<table id="operating-comparison">' in champion and "champion sensitivity" in champion
    assert re.search(r"Mean calibration error \(ECE\) on these films: champion \d\.\d{3}, this model \d\.\d{3}",
                     champion)


def test_uncalibrated_probabilities_get_a_plain_warning_and_real_data_no_banner():
    metrics = {"calibration": {"mean_ece": 0.28}, "min_positives": 10}
    text = intended_use_section({"data_source": "nih"}, metrics)
    assert 'id="synthetic"' not in text and "Data: NIH ChestX-ray14 (ingest.source nih)." in text
    assert "The probabilities are not calibrated (mean ECE 0.280): read them as scores" in text
    calibrated = intended_use_section({"data_source": "nih"}, {"calibration": {"mean_ece": 0.02}, "min_positives": 10})
    assert "not calibrated" not in calibrated


def test_subgroups_section(page):
    text = section(page, "subgroups")
    assert "<h2>Subgroups (test)</h2>" in text
    assert all(f'id="slices-{a}"' in text for a in ("sex", "age", "view", "sex_age"))
    assert "Seyyed-Kalantari et al., Nature Medicine 2021" in text
    assert "how many findings their ill films carry" in text
    gaps = re.findall(r"<li( class=\"flagged\")?>(.*?)</li>", text[text.index('<ul class="gaps">'):])
    # the planted gap, flagged, first and marked: the pair's plain 95% interval, 3 decimals, and the
    # family-wise permutation test that flags it
    assert gaps[0] == (' class="flagged"',
                       "Underdiagnosis rate by sex: F is higher than M by 0.500 (95% CI 0.453 to 0.558; "
                       "family-wise permutation p = 0.005 over 2 slices, 200 shuffles): flagged.")
    flagged = [body for mark, body in gaps if mark]
    assert gaps[:len(flagged)] == [(' class="flagged"', body) for body in flagged]
    assert any(body.startswith("Underdiagnosis rate by sex × age band: F/") and "family-wise" in body
               for body in flagged)
    assert any(body.startswith("No gap between age band slices is significant. ") for _, body in gaps)
    # the 80+ slice (6 ill films of 4 patients) and the empty bands read "too small", with the reason, never a number
    row = re.search(r"<tr><td>80\+</td>(.*?)</tr>", text).group(1)
    assert row.count(">too small</td>") == 2 and not re.search(r"\d\.\d{3}", row)
    assert 'title="too few patients (n=4)"' in row
    assert "80+ (mean AUC: too few patients (n=4); underdiagnosis rate: too few patients (n=4))" in text
    assert "0-20 (no test images in the slice), 20-40 (no test images in the slice)" in text
    assert "< min_slice_positives" not in text  # escaped everywhere
    m_row = re.search(r"<tr><td>M</td>(.*?)</tr>", text).group(1)
    assert "<td>300 (150)</td>" in m_row and "<td>1.000</td>" in m_row
    assert text.count("<details>") == 4


def test_calibration_section(page):
    text = section(page, "calibration")
    assert "<h2>Calibration (test)</h2>" in text and "10 equal-mass" in text and "Platt scaling" in text
    table = text[text.index('<table id="ece">'):text.index("</table>")]
    assert "<th>ECE before recalibration</th><th>ECE</th>" in table
    assert all(f"<tr><td>{f}</td>" in table for f in FINDINGS) and "mean over findings" in table
    assert re.search(r"<tr><td>Mass</td><td>\d\.\d{3}</td><td>\d\.\d{3}</td></tr>", table)
    assert text.count("<svg") == 2 and "all findings" in text and "<polyline" in text


def test_gap_sentence_when_not_computable():
    gap = {"attribute": "view", "metric": "mean_auc", "high": None, "low": None, "difference": None, "ci": None,
           "confidence": None, "slices_compared": 1, "flagged": False, "reason": "1 slice(s) with a <mean_auc>"}
    assert gap_sentence(gap) == "Mean AUC by view: not compared (1 slice(s) with a &lt;mean_auc&gt;)."


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no `chromium` binary on PATH (Debian package chromium)")
def test_card_renders_in_headless_chromium(tmp_path, page):
    path = tmp_path / "model_card.html"
    path.write_text(page)
    result = subprocess.run(
        ["chromium", "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    dom = result.stdout
    assert 'id="per-finding"' in dom and dom.count("<svg") == len(FINDINGS) + 2
    assert section(dom, "calibration").count("<svg") == 2 and 'id="ece"' in dom
    subgroups = section(dom, "subgroups")
    assert 'class="flagged"' in subgroups and "too small" in subgroups and subgroups.count("<details>") == 4
    strata = section(dom, "strata")
    assert 'class="flagged"' in strata and "in Site=north is" in strata and 'id="slices-Site"' in strata


def test_calibration_section_alone_and_from_a_whole_report():
    """Without a recalibration there is no before column; a calibration_report
    passed whole (its curves inside) still gets its diagram."""
    rng = np.random.default_rng(1)
    labels = (rng.random((200, 14)) < 0.2).astype(int)
    report = calibration_report(labels, rng.random((200, 14)), n_bins=5)
    text = calibration_section({"method": "none", **report})
    assert "No recalibration" in text and "before recalibration" not in text and "5 equal-mass" in text
    assert text.count("<svg") == 2 and "http" not in text
    assert calibration_section(None) == "" and subgroups_section(None) == ""


def test_a_share_of_too_few_films_is_not_a_figure():
    from pipeline.model.model_card import share_cell

    metrics = {"test_positives": {"Mass": 3}, "min_positives": 10, "test_images": 70,
               "sensitivity": {"Mass": 1.0}, "specificity": {"Mass": 0.8}}
    assert ">too few</span>" in share_cell(metrics, "sensitivity", "Mass") and "3 positives" in \
        share_cell(metrics, "sensitivity", "Mass")
    assert share_cell(metrics, "specificity", "Mass") == "0.800"  # 67 negatives
