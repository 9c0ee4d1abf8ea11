# The two commands of the quick start:
#   make demo   set up .venv, then run the default simulation (`ztfl simulate`)
#   make test   set up .venv, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints/cpu.txt
# mypy checks the package through the strict editable link tree, where the
# files sit under their ztfl.* names (docs/decisions/0001).
EDITABLE_TREE = $(firstword $(wildcard build/__editable__.ztfl-*))
# Reproducible, offline-friendly runs: no Flower telemetry, no Ray usage stats.
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test lint matrix bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Dependencies are installed once per pyproject/constraints change; the package
# itself is re-linked every time (strict editable mode maps files, not folders,
# so a new module needs a re-install; see docs/decisions/0001).
$(VENV)/.deps: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[all]' \
		--config-settings editable_mode=strict
	touch $@

setup: $(VENV)/.deps
	$(BIN)/python -m pip install --quiet --no-deps -e . --config-settings editable_mode=strict

demo: setup
	$(BIN)/ztfl simulate

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPYPATH=$(EDITABLE_TREE) $(BIN)/mypy -p ztfl.aggregation -p ztfl.server -p ztfl.client \
		-p ztfl.simulations -p ztfl.cli -p ztfl.trust
	$(BIN)/mypy tests benchmarks

matrix: setup
	$(BIN)/ztfl simulate --matrix

# make bench BENCH_ARGS=--quick   (only n=50, d=1e6; see benchmarks/aggregation.py --help)
bench: setup
	$(BIN)/python benchmarks/aggregation.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
