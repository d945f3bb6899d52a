"""The model card: one self-contained HTML page, and it renders in a real browser."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.model.metrics import curves, evaluation_metrics
from pipeline.model.model_card import model_card_html


def card(tmp_path, previous=True):
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 14)) < 0.2).astype(int)
    probs = np.clip(labels * 0.3 + rng.random((400, 14)) * 0.7, 0, 1)
    metrics = evaluation_metrics((labels, probs), (labels, probs), "youden", resamples=50, seed=0)
    comparison = None
    if previous:
        from pipeline.model.selection import paired_auc_comparison

        champion_probs = np.clip(probs + rng.normal(0, 0.2, probs.shape), 0, 1)
        comparison = paired_auc_comparison(labels, probs, champion_probs, np.arange(400) // 2, 50, seed=0)
        comparison.update(champion_version=1, champion_mean_auc=0.9, champion_auc={f: 0.9 for f in FINDINGS})
    registry = {"version": 2, "champion": False, "rule": "refused: a finding's AUC difference CI lies below",
                "reasons": ["Mass AUC drops by 0.1"], "comparison": comparison}
    summary = {"split_sizes": {"train": 1000, "val": 400, "test": 400}, "data_hash": "abc", "git_commit": "c0ffee",
               "test_manifest": "m", "backbone": "small_cnn", "image_size": 64, "fit": "crop"}
    path = tmp_path / "model_card.html"
    path.write_text(model_card_html("chestxray", summary, metrics, curves(labels, probs)["roc"], registry))
    return path


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_card_is_self_contained_and_complete(tmp_path):
    page = card(tmp_path).read_text()
    parsed = Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags and not parsed.urls
    assert "http:" not in page and "https:" not in page and "@import" not in page
    assert parsed.tags.count("svg") == len(FINDINGS) and parsed.tags.count("polyline") == len(FINDINGS)
    assert all(f in page for f in FINDINGS)
    assert "stays challenger" in page and "Mass AUC drops by 0.1" in page and "champion v1 AUC" in page
    assert "95% CI (paired, by patient)" in page and "400 test images of 200 patients" in page
    assert "champion v1" not in card(tmp_path, previous=False).read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no `chromium` binary on PATH (Debian package chromium)")
def test_card_renders_in_headless_chromium(tmp_path):
    path = card(tmp_path)
    result = subprocess.run(
        ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert 'id="per-finding"' in result.stdout and result.stdout.count("<polyline") == len(FINDINGS)
