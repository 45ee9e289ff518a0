# Two jobs, each from nothing: `make tutorial` runs the notebook series, `make test` the tests.
# Both build the same local environment in .venv from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= outputs

.PHONY: env tutorial record test tutorial-then-test lint clean

$(VENV)/.kpnb-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

env: $(VENV)/.kpnb-installed

# Runs every notebook in order on the embedded synthetic dataset; executed copies,
# figures, checkpoint and metrics land under $(OUT)/.
tutorial: env
	$(PY) -m kpnb.tutorial --out $(OUT)

# A full run, then make it the one the repository shows: the executed notebooks go back into
# notebooks/, the run record into notebooks/run_record.json, and the README's run table is
# regenerated from it (a smoke run is refused).
record: tutorial
	$(PY) -m kpnb.tutorial --record --out $(OUT)

# Unit tests plus every notebook under nbval, in the smoke mode the notebooks are committed in.
test: env
	KPNB_SMOKE=1 $(PY) -m pytest

# The README's two commands in order on one clone: a full run's outputs/ must not change the
# smoke run (smoke runs write to outputs/smoke, and run-dependent cells are not compared).
tutorial-then-test:
	$(MAKE) tutorial
	$(MAKE) test

lint: env
	$(PY) -m ruff check kpnb tests benchmarks
	$(PY) -m ruff format --check kpnb tests benchmarks

clean:
	rm -rf $(OUT) .pytest_cache
