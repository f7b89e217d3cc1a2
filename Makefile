# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-ingest bench-taxonomy bench-phash bench-images bench-dedup bench-release bench-train clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch 2.14.1 / torchvision 0.29.1 come from this machine's local wheel store (pinned in pyproject).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tol demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Benchmarks print a table with ratios against their named baseline (see benchmarks/README.md).
BENCHES := ingest taxonomy phash images dedup release train

bench: $(addprefix bench-,$(BENCHES))

bench-%: $(STAMP)
	$(BIN)/python benchmarks/$*.py

clean:
	rm -rf $(VENV) tol-demo tol-workspace .pytest_cache .ruff_cache
