"""evaluate.strata through the real pipeline: the phantom's planted drain
written as a Drain column, read back by the evaluate stage, and reported in
the evaluation JSON, the model card, MLflow and the Grad-CAM gallery; a column
the data does not have stops the stage in one line before any scoring."""
from __future__ import annotations

import json

import pytest

from tests.e2e.project import copy_project, run, write_params

pytestmark = pytest.mark.slow

SHORTCUT = {"ingest.phantom.shortcut.share_with": 0.9, "ingest.phantom.shortcut.share_without": 0.3,
            "evaluate.strata": ["Drain"]}


@pytest.fixture(scope="module")
def strata_run(prepared_tiny, tmp_path_factory):
    project = copy_project(prepared_tiny, tmp_path_factory.mktemp("strata") / "project", SHORTCUT)
    return project, run(["dvc", "repro"], project)


def test_the_drain_column_is_reported_by_stratum(strata_run):
    project, _ = strata_run
    metrics = json.loads((project / "reports" / "evaluate" / "evaluate.json").read_text())
    strata = metrics["strata"]
    drain = strata["columns"]["Drain"]
    assert set(drain["strata"]) == {"0", "1"} and drain["no_value"] == 0
    assert sum(s["n"] for s in drain["strata"].values()) == metrics["test_images"]
    # one pair x 14 findings x 2 metrics; on ~13 test films most are too few, and say so
    assert len(strata["gaps"]) == 28
    assert all(g["p_value"] is not None or g["reason"] for g in strata["gaps"])
    card = (project / "reports" / "evaluate" / "model_card.html").read_text()
    assert 'id="strata"' in card and 'id="slices-Drain"' in card
    # what explain shows of each flagged stratum: one entry per flag (none on ~13 films), read by explain
    missed = json.loads((project / "reports" / "evaluate" / "strata_missed.json").read_text())
    assert len(missed) == sum(g["metric"] == "sensitivity" for g in strata["flagged"])
    gallery = (project / "reports" / "gradcam" / "index.html").read_text()
    assert ('id="strata"' in gallery) == bool(missed)


def test_strata_are_logged_to_mlflow(strata_run):
    project, _ = strata_run
    from tests.conftest import mlflow_store

    run_id = json.loads((project / "models" / "mlflow_run.json").read_text())["run_id"]
    with mlflow_store(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}") as mlflow:
        client = mlflow.MlflowClient()
        logged = client.get_run(run_id)
        assert "strata_comparisons" in logged.data.metrics and "strata_flagged" in logged.data.metrics
        assert logged.data.params["evaluate.strata"] == '["Drain"]'
        tables = [a.path for a in client.list_artifacts(run_id, "tables")]
    assert "tables/test_by_stratum.json" in tables


def test_a_column_the_data_lacks_stops_evaluate_in_one_line(strata_run):
    project, _ = strata_run
    write_params(project, {"evaluate.strata": ["Site"]})
    result = run(["python", "src/evaluate.py"], project, check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "evaluate.strata:" in lines[0] and "has no column Site" in lines[0] \
        and "its added columns: Drain" in lines[0], result.stderr
