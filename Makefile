# Every target builds ./.venv with all extras on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv test lint typecheck unit integration demo bench tox clean

help:
	@echo "make demo   - the FastAPI catalog example and a second service's inbox, end to end"
	@echo "make test   - lint (ruff), types (mypy --strict) and the whole test suite"
	@echo "make bench  - benchmarks under bench/, each printed beside a raw-SQL baseline"
	@echo "make tox    - the test suite on Python 3.10-3.13"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

test: lint typecheck
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python -m integrations.demo

bench: $(STAMP)
	$(BIN)/python bench/enqueue.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/inbox.py
	$(BIN)/python bench/claim.py

# pyenv's interpreters, when present, are put on the PATH so that tox finds 3.10-3.13.
PYENV_BINS := $(wildcard $(HOME)/.pyenv/versions/3.1[0-3]*/bin)
empty :=
space := $(empty) $(empty)

tox: $(STAMP)
	PATH="$(if $(PYENV_BINS),$(subst $(space),:,$(PYENV_BINS)):)$$PATH" $(BIN)/tox run-parallel

clean:
	rm -rf $(VENV) .tox .mypy_cache .ruff_cache .pytest_cache build *.egg-info
