"""Tracking-server checks: fail fast, in one line, without leaking a password;
bounded waits on MLflow calls and on the store's locks."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.core.store_lock import StoreError, registry_lock, sqlite_path
from pipeline.core.tracking import (
    ARGUMENT_REMEDY,
    DEFAULT_TIMEOUT_S,
    TrackingServerError,
    bound_http_waits,
    check_tracking_server,
    git_commit,
    redacted,
)
from tests.conftest import free_port


def test_a_dead_server_is_named_without_its_password():
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingServerError) as caught:
        check_tracking_server(uri, timeout=2)
    message = str(caught.value)
    assert "s3cret" not in message and "alice:***@127.0.0.1" in message
    assert "is not reachable" in message and message.endswith("; start it or unset MLFLOW_TRACKING_URI")


def test_a_dead_server_the_caller_named_gets_the_caller_s_remedy():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingServerError) as caught:
        check_tracking_server(uri, timeout=2, remedy=ARGUMENT_REMEDY)
    assert str(caught.value).endswith("; start it or pass another tracking URI")


def test_local_stores_are_not_checked_and_plain_uris_are_kept():
    check_tracking_server("sqlite:///mlruns/mlflow.db")  # no server to ask: returns
    assert redacted("https://mlflow.example.org/") == "https://mlflow.example.org/"
    assert redacted("https://bob:pw@host:5000/x") == "https://bob:***@host:5000/x"


def test_mlflow_http_waits_are_bounded_unless_the_user_set_them(monkeypatch, tmp_path):
    for setting in ("TIMEOUT", "MAX_RETRIES", "BACKOFF_FACTOR"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{setting}", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    bound_http_waits(7.4)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"  # the user's own setting wins
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the default
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    bound_http_waits(None)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == str(DEFAULT_TIMEOUT_S)
    (tmp_path / "params.yaml").write_text("mlflow:\n  experiment: x\n  timeout_s: 12\n")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    bound_http_waits(None)  # a stage that does not pass it: read from params.yaml
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "12"


def test_sqlite_paths_are_read_from_relative_and_absolute_uris():
    assert sqlite_path("sqlite:///mlruns/mlflow.db") == Path("mlruns/mlflow.db")
    assert sqlite_path("sqlite:////abs/store.db") == Path("/abs/store.db")
    assert sqlite_path("http://127.0.0.1:5000") is None and sqlite_path("sqlite:///:memory:") is None


def test_a_held_registry_lock_is_waited_for_a_bounded_time(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with registry_lock(uri, "chestxray", timeout_s=1):
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"mlflow\.db\.registry\.lock: still locked after 0.3s by another stage"):
            with registry_lock(uri, "chestxray", timeout_s=0.3):
                pass
        assert time.monotonic() - started < 2
    with registry_lock(uri, "chestxray", timeout_s=0.3):  # released: taken at once
        pass


def test_runs_are_named_by_what_differs_and_the_experiment_is_a_training_one(tmp_path, monkeypatch):
    import mlflow

    from pipeline.core.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, configure_mlflow, experiment_page, run_name

    assert run_name("densenet121", 320, "nih", 78468, "1a2b3c4d5e6f7a8b") == "densenet121-320px-nih-78468img-1a2b3c4d"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert experiment_page("http://127.0.0.1:5000", "chestxray", store) == \
        "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"  # no store yet: the list
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    configure_mlflow("chestxray")
    experiment = mlflow.get_experiment_by_name("chestxray")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert experiment_page("http://127.0.0.1:5000/", "chestxray", store) == \
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"


def test_evaluate_params_are_run_params_and_a_re_evaluation_s_new_values_are_tags(tmp_path, monkeypatch):
    """MLflow params cannot change: a run evaluated again with another
    threshold method keeps its first value as the param and gets the new one as a tag."""
    import mlflow

    from pipeline.core.tracking import configure_mlflow
    from pipeline.model.evaluate import log_evaluate_params, rounded

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    configure_mlflow("chestxray")
    with mlflow.start_run() as run:
        log_evaluate_params(mlflow, {"threshold_method": "youden", "calibration": "none"})
        log_evaluate_params(mlflow, {"threshold_method": "max_f1", "calibration": "none"})
    data = mlflow.get_run(run.info.run_id).data
    assert data.params["evaluate.threshold_method"] == "youden" and data.params["evaluate.calibration"] == "none"
    assert data.tags["evaluate.threshold_method"] == "max_f1" and "evaluate.calibration" not in data.tags
    assert rounded({"test_mean_auc": 0.7321456789}) == {"test_mean_auc": 0.7321}


def test_a_table_logged_again_replaces_the_old_rows(tmp_path, monkeypatch):
    """A run evaluated twice (evaluate params changed) keeps one table, not both (MLflow's log_table appends)."""
    import mlflow
    import pandas as pd

    from pipeline.core.tracking import configure_mlflow, log_table

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    configure_mlflow("chestxray")
    with mlflow.start_run() as run:
        log_table(mlflow, pd.DataFrame({"finding": ["Mass", "Nodule"], "auc": [0.7, 0.6]}), "tables/t.json")
        log_table(mlflow, pd.DataFrame({"finding": ["Mass", "Nodule"], "auc": [0.8, None]}), "tables/t.json")
    table = mlflow.load_table("tables/t.json", run_ids=[run.info.run_id])
    assert table["finding"].tolist() == ["Mass", "Nodule"] and table["auc"].iloc[0] == 0.8
    assert '"type": "table"' in mlflow.get_run(run.info.run_id).data.tags["mlflow.loggedArtifacts"]


def test_a_commit_is_dirty_for_changed_code_or_params_but_not_for_dvc_s_own_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert git_commit() == "unknown"  # not a git repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text("{}")
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  evaluate:\n    cmd: python src/evaluate.py\n"
                                       "    outs:\n    - path: metrics/evaluate.json\n      md5: 0\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit() == head
    # what `dvc repro` does around a stage: delete its outputs, then rewrite them and the lock
    (tmp_path / "metrics" / "evaluate.json").unlink()
    assert git_commit() == head
    (tmp_path / "metrics" / "evaluate.json").write_text('{"auc": 0.5}')
    (tmp_path / "dvc.lock").write_text((tmp_path / "dvc.lock").read_text().replace("md5: 0", "md5: 1"))
    assert git_commit() == head
    (tmp_path / "params.yaml").write_text("seed: 2\n")  # a change the commit does not hold
    assert git_commit() == head + "-dirty"
