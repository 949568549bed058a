# kdflow: `make demo` and `make test` each set everything up on a fresh machine, then run.
# Every install comes from requirements.txt (pip-compile output), never from a fresh resolve, so a fresh
# machine gets exactly the versions CI tested. `make lock` refreshes the lock after a change to pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.txt
# The lock's tool, pinned: pip-tools 7.7.0 runs on pip 26.3 (both also in the lock).
PIP_VERSION      := 26.3
PIP_TOOLS_VERSION := 7.7.0
COMPILE = $(BIN)/pip-compile --quiet --allow-unsafe --strip-extras --extra dev --no-emit-index-url --no-emit-find-links

.PHONY: demo test test-fast install clean bench lock lock-check lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 in the lock resolves to the CPU build on this machine's disk (2.13.0+cpu, pip's find-links);
# `pip-sync`-like: exact pins, no dependency resolution, the project itself without build isolation.
$(STAMP): $(LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kdflow demo

# The full suite (unit, library, end-to-end flows on tiny data). `make test-fast` skips the slow ones.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# ruff, then the import contracts in pyproject.toml ([tool.importlinter]: the layering, no Prefect in kdflow/).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Re-resolve the lock from pyproject.toml, keeping every existing pin that still satisfies it.
# `make lock UPGRADE=1` moves every pin to the newest allowed release.
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION)
	$(COMPILE) $(if $(UPGRADE),--upgrade) --output-file $(LOCK) pyproject.toml

# Fails when the lock is out of date with pyproject.toml: a re-resolve that keeps the existing pins must change
# nothing (a new or changed requirement changes the lock).
lock-check: $(STAMP)
	@tmp=$$(mktemp -d) && cp $(LOCK) $$tmp/lock.txt && \
	$(COMPILE) --output-file $$tmp/lock.txt pyproject.toml && \
	if diff -u -I '^#    pip-compile' $(LOCK) $$tmp/lock.txt; then echo "lock is up to date with pyproject.toml"; \
	else echo "requirements.txt is out of date with pyproject.toml: run 'make lock' and commit it" >&2; exit 1; fi

bench: $(STAMP)
	$(BIN)/python bench/quality.py --json bench/results/quality.json

clean:
	rm -rf .kdflow
