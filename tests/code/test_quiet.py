"""Library noise stays out of what a user sees, and PIPELINE_DEBUG brings it back."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import PROJECT_ROOT

# Imports TensorFlow (its C++ start-up lines) and defines the pyfunc class
# (MLflow's "Add type hints" warning, raised under its own "once" filter).
NOISY = "import pipeline; from pipeline.serve.pyfunc import ChestXrayPyfunc; import tensorflow as tf; tf.constant(1)"


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_DEBUG", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env={**environment, **env},
                          capture_output=True, text=True, timeout=300)


def test_importing_the_pipeline_silences_tensorflow_and_mlflow():
    result = run_python(NOISY)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_pipeline_debug_brings_the_library_lines_back():
    result = run_python(NOISY, PIPELINE_DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert "Add type hints" in result.stderr


def test_our_own_warnings_still_show():
    result = run_python("import pipeline, warnings; warnings.warn('a warning of ours')")
    assert "a warning of ours" in result.stderr
