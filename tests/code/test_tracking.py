"""Tracking-server checks: fail fast, in one line, without leaking a password;
bounded waits on MLflow calls and on the store's locks."""

import os
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
