# Every target installs what it needs into .venv first (a fresh clone has nothing):
# `make run` only the package and its runtime dependencies, `make test` also the
# linters, type checker, test tools and the extras the tests exercise (".[dev]").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.run-stamp
DEV_STAMP := $(VENV)/.dev-stamp

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
	  echo "shoal needs Python >= 3.10; $(PYTHON) is older: run 'make PYTHON=python3.11 ...'" >&2; \
	  exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

# ".[dev]" includes the package, so it also satisfies `make run`.
$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@ $(RUN_STAMP)

.PHONY: setup run test bench
setup: $(DEV_STAMP)

# shoal's main job on its embedded defaults: the demo batch, with checkpoint and
# summary; it writes into ./shoal-demo/ (git-ignored), so the clone stays clean.
run: $(RUN_STAMP)
	$(VENV)/bin/shoal run

# the whole suite: lint, types, tests
test: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy src tests
	$(VENV)/bin/pytest

bench: $(DEV_STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py
