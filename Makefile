# The two commands a new user runs: `make quickstart` and `make test`. Both are idempotent.
# Everything installs from the locks (requirements*.lock): the same packages on every machine,
# whatever the registry has released since. `make lock` re-resolves them after editing pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := 25.3

.PHONY: setup quickstart smoke test bench lock clean

# Re-installs only when a lock or pyproject.toml changes; fails when they disagree.
$(VENV)/.installed: requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==$(PIP)
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python scripts/lock.py check
	$(BIN)/python -m pip check
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(BIN)/musicray quickstart

# Every module imports and the command line answers: a broken install fails here, in seconds.
smoke: setup
	$(BIN)/python scripts/smoke.py

test: smoke
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks.extract

lock: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python scripts/lock.py compile $(if $(UPGRADE),--upgrade)

clean:
	rm -rf demo workspace .pytest_cache
