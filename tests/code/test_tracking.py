"""Tracking-server checks: fail fast, in one line, without leaking a password."""

import pytest

from pipeline.core.tracking import TrackingServerError, check_tracking_server, redacted
from tests.conftest import free_port


def test_a_dead_server_is_named_without_its_password():
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingServerError) as caught:
        check_tracking_server(uri, timeout=2)
    message = str(caught.value)
    assert "s3cret" not in message and "alice:***@127.0.0.1" in message
    assert "is not reachable" in message and "unset MLFLOW_TRACKING_URI" in message


def test_local_stores_are_not_checked_and_plain_uris_are_kept():
    check_tracking_server("sqlite:///mlruns/mlflow.db")  # no server to ask: returns
    assert redacted("https://mlflow.example.org/") == "https://mlflow.example.org/"
    assert redacted("https://bob:pw@host:5000/x") == "https://bob:***@host:5000/x"
