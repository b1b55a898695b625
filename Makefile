# nanostudy: the two commands a new user needs are `make quickstart` and `make test`.
# Everything else (uv itself, the virtual environment, services the tests need) is set up on demand.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv: the one on PATH, else a private copy bootstrapped with pip into .tools/ (needs only python3 + pip).
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/uv/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
STUDY ?= studies/quickstart.yaml

.PHONY: help setup quickstart test test-fast lint format browser slurm clean

help:
	@echo "make quickstart   set up, then run the quickstart study (CPU-sized, offline)"
	@echo "make test         set up, lint, then run the test suite"
	@echo "make lint|format  ruff check / ruff format"
	@echo "make browser      install Debian's chromium for the report's browser test (needs root or sudo)"
	@echo "make slurm        install Debian's Slurm for the Slurm executor's tests (needs root or sudo)"

$(CURDIR)/.tools/uv/bin/uv:
	python3 -m pip install --quiet --disable-pip-version-check --target $(CURDIR)/.tools/uv uv

# The environment is rebuilt only when the lock or the project metadata changes. Bytecode is compiled at
# install time: with PYTHONDONTWRITEBYTECODE set, every trainer process would otherwise compile torch's
# sources again on import (about 2.5 s of each start on a 2-core machine).
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --compile-bytecode
	@touch $@

setup: $(VENV)/.synced

quickstart: setup
	$(VENV)/bin/nanostudy run $(STUDY)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: setup lint
	$(VENV)/bin/pytest -q

# The report's browser test skips without /usr/bin/chromium; CI (.ci/run) installs it first.
browser:
	bash scripts/install-chromium.sh

# The Slurm executor's tests (tests/test_slurm.py) skip without Slurm; CI (.ci/run) installs it first.
slurm:
	bash scripts/install-slurm.sh

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache
