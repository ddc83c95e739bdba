# Every target builds ./.venv with all extras on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv chromium test lint typecheck unit integration demo bench chaos chaos-breaks tox clean

help:
	@echo "make demo   - the FastAPI catalog example and a second service's inbox, end to end"
	@echo "make test   - lint (ruff), types (mypy --strict) and the whole test suite"
	@echo "make bench  - benchmarks under bench/, each printed beside a raw-SQL baseline"
	@echo "make chaos  - the fault-injection run: 100,000 events under real faults (~10 min)"
	@echo "make chaos-breaks - the same run (shorter) on deliberately broken builds: each must fail"
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

# The dashboard's browser test drives Debian's chromium (Playwright never downloads its own).
chromium:
	@test -x /usr/bin/chromium || apt-get install -y chromium || \
	  { apt-get update && apt-get install -y chromium; } || \
	  echo "chromium: could not install it; the dashboard's browser test will be skipped"

integration: chromium

test: lint typecheck chromium
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python -m integrations.demo $(if $(BROKER),--broker $(BROKER))

bench: $(STAMP)
	$(BIN)/python bench/enqueue.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/inbox.py
	$(BIN)/python bench/claim.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/retention.py
	$(BIN)/python bench/brokers.py

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.run

# Each breakage must make the run fail (exit 1); a run that passes on a broken build fails here.
chaos-breaks: $(STAMP)
	@for breakage in ack-before-store mark-before-ack; do \
	  if $(BIN)/python -m tests.chaos.run --events 5000 --seconds 45 --kill-every 6 --quiet-timeout 60 \
	      --break $$breakage; then \
	    echo "chaos-breaks: the run passed with $$breakage: it cannot see that breakage"; exit 1; \
	  else echo "chaos-breaks: $$breakage caught"; fi; \
	done

# pyenv's interpreters, when present, are put on the PATH so that tox finds 3.10-3.13.
PYENV_BINS := $(wildcard $(HOME)/.pyenv/versions/3.1[0-3]*/bin)
empty :=
space := $(empty) $(empty)

tox: $(STAMP)
	PATH="$(if $(PYENV_BINS),$(subst $(space),:,$(PYENV_BINS)):)$$PATH" $(BIN)/tox run-parallel

clean:
	rm -rf $(VENV) .tox .mypy_cache .ruff_cache .pytest_cache build *.egg-info
