# explain-service: `make serve` and `make test` are the whole quick start.
# The interpreter must be Python 3.12+ (3.12, the pinned runtime, is preferred);
# override with `make PYTHON=/path/to/python3.12 ...`.

SHELL := /bin/bash
PYENV_ROOT ?= $(HOME)/.pyenv
PYTHON ?= $(shell for c in python3.12 $$(ls -d $(PYENV_ROOT)/versions/3.12.*/bin/python3 2>/dev/null | sort -rV) python3 python3.13 python3.14 $$(ls -d $(PYENV_ROOT)/versions/3.1[3-9]*/bin/python3 2>/dev/null | sort -V); do \
	p=$$(command -v $$c 2>/dev/null) || continue; \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: serve test test-fast lint bench models venv check-python clean

check-python:
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: no Python 3.12 or newer found (tried python3.12+, pyenv versions, python3)." >&2; \
		echo "       Install Python 3.12 or run: make PYTHON=/path/to/python3.12 $(MAKECMDGOALS)" >&2; exit 1; fi
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), sys.version' 2>/dev/null || { \
		echo "error: $(PYTHON) is not Python 3.12+ ($$($(PYTHON) --version 2>&1))" >&2; exit 1; }

$(BIN)/.installed: requirements.txt pyproject.toml | check-python
	@[ -x $(BIN)/python ] && $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

venv: $(BIN)/.installed

models: venv
	$(BIN)/explain-service models build-demo

serve: models
	mkdir -p var
	$(BIN)/explain-service serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

lint: venv
	$(BIN)/ruff check explain_service tests bench wsgi.py
	$(BIN)/ruff format --check explain_service tests bench wsgi.py
	$(BIN)/mypy

test: venv lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the tests marked slow (subprocesses, worker pools, the notebook); make test runs them all.
test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: models
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
