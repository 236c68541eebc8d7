# One venv in the checkout; every target works on a fresh clone by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-heavy lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev,cluster,optuna]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snn-train +experiment=digits

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Minutes each (inductor compiles on CPU, the GPU check's whole smoke run, a wandb multirun).
test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m heavy

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

bench: $(STAMP)
	$(BIN)/snn-bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info outputs multirun
