# Two commands do all set-up on a fresh machine:
#   make run    the whole pipeline (dvc repro) on the default, synthetic data
#   make test   the test suite (what CI runs)
# Both create or refresh the virtualenv from the pins first; when the pins
# have not changed since the last install, they install nothing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

# The venv's tools first, for dvc's stage commands (`python src/...`) too.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# No network at run time: telemetry and analytics off.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export GX_ANALYTICS_ENABLED := False
export DVC_NO_ANALYTICS := 1

.PHONY: run test test-quick setup mlflow-ui clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $@

setup: $(STAMP)

run: $(STAMP)
	dvc repro

test: $(STAMP)
	python -m pytest $(PYTEST_ARGS)

test-quick: $(STAMP)
	python -m pytest -m "not slow" $(PYTEST_ARGS)

mlflow-ui: $(STAMP)
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf data/ingest data/validated data/tfrecords models reports metrics
