# Every target installs what it needs into .venv first (a fresh clone has nothing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

.PHONY: setup run test lint bench
setup: $(STAMP)

# shoal's main job on its embedded defaults (a demo batch with checkpoint and report)
run: $(STAMP)
	$(VENV)/bin/shoal run

# the whole suite: lint, types, tests
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy src
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py
