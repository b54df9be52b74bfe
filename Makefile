# The README's two commands are `make sweep` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench clean

$(BIN)/satune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/satune

# The base trial of the main job, without Ray or MLflow.
run: install
	$(BIN)/satune run sweeps/wA.yaml

test: install
	$(BIN)/ruff check satune tests bench
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check satune tests bench
	$(BIN)/ruff format --check satune tests bench

bench: install
	$(BIN)/python bench/sat_cost.py

clean:
	rm -rf $(VENV) runs *.egg-info
