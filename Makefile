# One venv in the checkout; every target works on a fresh clone by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-quick lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev,cluster,optuna,interop]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snn-train +experiment=digits

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The suite without the few tests that take minutes (inductor compiles on CPU, the GPU check's smoke run).
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not heavy"

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

bench: $(STAMP)
	$(BIN)/snn-bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info outputs multirun
