# The README's two commands are `make sweep` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install browser postgres prometheus sweep run ui test test-unit lint bench gpu-check clean

$(BIN)/satune: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/satune

# Headless Chromium for the browser tests: Debian's package, never a test tool's own browser download.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; }

# PostgreSQL for the test of MLflow on PostgreSQL: Debian's package; the test starts its own throwaway cluster.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

# Prometheus for the test of the Grafana dashboard's queries: Debian's package (no recommends); the test
# runs the binary on a port and config of its own, never the package's service.
prometheus:
	@command -v prometheus >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# The main job: SAT's weighting study on Ray Tune + Optuna + MLflow, on the embedded default.
sweep: install
	$(BIN)/satune sweep sweeps/wA.yaml

# Its base trial alone, without Ray or MLflow.
run: install
	$(BIN)/satune run sweeps/wA.yaml

# Compare the trials of the sweeps in runs/ in the MLflow UI (http://127.0.0.1:5000).
ui: install
	$(BIN)/satune ui sweeps/wA.yaml

# Lint and types, then unit tests, integration tests (real Ray, real MLflow server on 127.0.0.1, one on a
# throwaway PostgreSQL; the Grafana dashboard's queries on a real Prometheus; pages opened in headless Chromium,
# screenshots kept in test-artifacts/), GPU tests where CUDA exists.
test: install browser postgres prometheus
	$(BIN)/ruff check satune tests bench docs/findings.py
	$(BIN)/ruff format --check satune tests bench docs/findings.py
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

lint: install
	$(BIN)/ruff check satune tests bench docs/findings.py
	$(BIN)/ruff format --check satune tests bench docs/findings.py
	$(BIN)/mypy

# The one prepared check for a GPU at hand (under 8 minutes): docs/benchmarks.md, "The GPU check".
gpu-check: install
	$(BIN)/python bench/gpu_check.py

bench: install
	$(BIN)/python bench/sat_cost.py
	$(BIN)/python bench/biamat_cost.py
	$(BIN)/python bench/sweep_overhead.py

clean:
	rm -rf $(VENV) runs *.egg-info
