"""The MLflow UI a team chooses a model in, read in headless Chromium.

A real `mlflow ui` on 127.0.0.1 (the command `make mlflow-ui` runs) over a real
store holding three versions registered by the project's code: the first
(champion), a challenger the paired comparison refused, and a third that the
rule promoted. Every page is what a person sees after React has drawn it
(`--dump-dom` after the page's scripts ran)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from tests.conftest import free_port, mlflow_store
from tests.e2e.test_mlflow_server import stop, wait_for_health

pytestmark = pytest.mark.slow

NAME = "chestxray"
EXPERIMENT = "chestxray"
SIZE = 32
TEST_FILMS, TEST_PATIENTS = 400, 200
# A fresh profile, and none of Chromium's own calls to Google's hosts (refused here).
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--virtual-time-budget=20000"]


def require_chromium() -> None:
    """Skip without Debian's chromium; under CI=true (where `make test` installs it) fail."""
    if shutil.which("chromium") is None:
        reason = "no `chromium` binary on PATH (Debian package chromium; `make test` installs it as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


def decisions(rng) -> list[dict]:
    """Three decisions made by the project's rule on paired scores of one test
    set: the first version, a clearly worse challenger, a clearly better one."""
    from pipeline.core.settings import PromotionSettings
    from pipeline.model.champion import operating_comparison
    from pipeline.model.promotion import RULE_FIRST, apply_rule
    from pipeline.model.selection import paired_auc_comparison

    labels = (rng.random((TEST_FILMS, len(FINDINGS))) < 0.2).astype(int)
    patients = np.arange(TEST_FILMS) // 2
    noise = rng.random((TEST_FILMS, len(FINDINGS)))
    scores = {strength: np.clip(labels * strength + noise * (1 - strength), 0, 1) for strength in (0.1, 0.3, 0.5)}
    thresholds = {f: 0.5 for f in FINDINGS}
    made = [{"promote": True, "rule": RULE_FIRST, "reasons": [f"no version of {NAME} holds the champion alias yet"],
             "champion_version": None, "comparison": None}]
    for champion, (ours, theirs) in ((1, (0.1, 0.3)), (1, (0.5, 0.3))):
        comparison = paired_auc_comparison(labels, scores[ours], scores[theirs], patients, resamples=200, seed=0)
        comparison.update(champion_version=champion, champion_mean_auc=0.7, champion_auc={f: 0.7 for f in FINDINGS},
                          **operating_comparison(labels, (scores[theirs], thresholds), (scores[ours], thresholds), 10))
        outcome = apply_rule(comparison, None, PromotionSettings(0.02, 0.05, resamples=200, subgroups=False,
                                                                   strata=False))
        promote, rule, reasons = outcome.promote, outcome.rule, outcome.reasons
        made.append({"promote": promote, "rule": rule, "reasons": reasons, "champion_version": champion,
                     "comparison": comparison})
    assert [d["promote"] for d in made] == [True, False, True]
    return made


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The store (experiment made by configure_mlflow, runs named by
    tracking.run_name, three registered versions) and `mlflow ui` over it."""
    import mlflow

    from pipeline.core.tracking import configure_mlflow, run_name
    from pipeline.model.architectures import build_model
    from pipeline.model.registry import register_model, registry_model_metadata

    require_chromium()
    root = tmp_path_factory.mktemp("ui")
    store = f"sqlite:///{root / 'mlflow.db'}"
    model = build_model("small_cnn", SIZE, "none")
    rng = np.random.default_rng(0)
    metrics = {"mean_auc": 0.71, "mean_auc_ci": [0.65, 0.77], "mean_auc_findings": 14,
               "auc": {f: 0.71 for f in FINDINGS},
               "auc_ci_low": {f: 0.6 for f in FINDINGS}, "auc_ci_high": {f: 0.8 for f in FINDINGS},
               "test_positives": {f: 80 for f in FINDINGS}, "sensitivity": {f: 0.7 for f in FINDINGS},
               "specificity": {f: 0.75 for f in FINDINGS}, "threshold_method": "youden", "test_images": TEST_FILMS,
               "test_patients": TEST_PATIENTS, "ci_method": "95% CI, percentile bootstrap over patients, 200 resamples"}
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = store
    try:
        with mlflow_store(store):
            configure_mlflow(EXPERIMENT)
            for i, decision in enumerate(decisions(rng)):
                data_hash = f"{i + 1}" * 16
                with mlflow.start_run(run_name=run_name("small_cnn", SIZE, "phantom", 300, data_hash)):
                    mlflow.log_text("<!DOCTYPE html><title>card</title><p>model card</p>", "model_card.html")
                    metadata = registry_model_metadata({f: 0.5 for f in FINDINGS}, {"image_size": SIZE, "fit": "crop"},
                                                       metrics, "manifest", data_source="phantom")
                    register_model(mlflow, model, NAME, metadata,
                                   {"data_hash": data_hash, "git_commit": "c0ffee"}, decision,
                                   params={"train": {"epochs": 3 + i}}, card_artifact="model_card.html")
            experiment_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI") if previous is None else os.environ.update(MLFLOW_TRACKING_URI=previous)
    port = free_port()
    log = root / "ui.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
         "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, server, log)
        yield {"url": url, "experiment_id": experiment_id, "profile": root / "chromium", "store": store}
    finally:
        stop(server)


def dom(ui: dict, route: str) -> str:
    """The page at `#/route` after its scripts ran, as Chromium serialises it."""
    result = subprocess.run([*CHROMIUM, f"--user-data-dir={ui['profile']}", "--dump-dom", f"{ui['url']}/#/{route}"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def text_of(page: str) -> str:
    """The page's visible text, tags removed, one space between elements."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", body)))




def test_the_listing_shows_exactly_one_champion(ui):
    text = text_of(dom(ui, f"models/{NAME}"))
    assert "Version 3" in text and "Version 1" in text
    assert len(re.findall(r"(?<!former )champion_decision : champion\b", text)) == 1
    assert text.count("champion_decision : former champion") == 1
    assert text.count("@ champion") == 1
    assert "auc_Mass" not in text and "threshold_Mass" not in text  # per-finding figures are in the description


def version_page(ui, number: int) -> tuple[str, str]:
    page = dom(ui, f"models/{NAME}/versions/{number}")
    return page, text_of(page)


def finding_row(page: str, finding: str) -> list[str]:
    """The cells of `finding`'s row in the description's per-finding table."""
    table = page[page.index("Test positives"):]
    row = re.search(rf"<tr>\s*<td>{finding}\W*</td>(.*?)</tr>", table, flags=re.S)
    assert row, f"no table row for {finding}"
    return [finding, *(unescape(cell).strip() for cell in re.findall(r"<td>(.*?)</td>", row.group(1), flags=re.S))]


def test_every_version_page_states_its_decision_in_sentences(ui):
    pages = {number: version_page(ui, number) for number in (1, 2, 3)}
    for number, (page, text) in pages.items():
        assert "Decision at registration:" in text, number
        assert '["' not in text and "[{" not in text, number  # no JSON list anywhere on the page
        assert "Synthetic phantom: these figures say nothing about clinical performance." in text
        assert re.search(rf'href="#/experiments/{ui["experiment_id"]}/runs/\w+/artifacts/model_card.html"', page)
        # the table's cells are cells, kept apart on the page by an em space
        assert finding_row(page, "Mass") == ["Mass", "80", "0.710", "0.600 to 0.800", "0.500", "0.70", "0.75"]
        assert "Mass\u2003" in unescape(page)
    first, refused, promoted = (pages[n][1] for n in (1, 2, 3))
    assert "Now: former champion. Champion until " in first and "when version 3 took the alias (non-inferior" in first
    assert "challenger : not promoted; the champion stayed version 1. Rule: refused: mean AUC difference" in refused
    assert "What changed from champion version 1 param train.epochs : 3 → 4" in refused
    assert "champion : this version took the champion alias. Rule: non-inferior" in promoted
    assert "Sensitivity and specificity on these films, each model at its own thresholds" in promoted


def test_the_experiment_opens_in_the_machine_learning_view(ui):
    """The URL `make mlflow-ui` prints: the runs table, and a sidebar with the model registry."""
    import json
    import urllib.request

    from pipeline.core.tracking import experiment_page

    page = experiment_page(ui["url"], EXPERIMENT, ui["store"])
    assert page == f"{ui['url']}/#/experiments/{ui['experiment_id']}?workflowType=machine_learning"
    text = text_of(dom(ui, page.split("/#/", 1)[1]))
    assert "Model registry" in text and "Sessions" not in text and "Training runs" not in text
    assert text.count("small_cnn-32px-phantom-300img-") == 3
    with urllib.request.urlopen(f"{ui['url']}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}",
                                timeout=10) as answer:
        tags = {tag["key"]: tag["value"] for tag in json.load(answer)["experiment"]["tags"]}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
