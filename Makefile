# Two commands do everything on a fresh machine with Python 3.11+:
#   make demo   - create .venv, install, initialise, run a 50-piece batch for `demo`
#   make test   - create .venv with test extras if needed, run the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install install-test bench clean faults

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/studio demo --pieces 50

test: install-test
	$(BIN)/ruff check .
	$(BIN)/pytest

# the slow fault suite (tests/faults): a real `studio server` on PostgreSQL, process
# workers, S3 and the provider emulators, killed and flooded; prints one [FAULT ...] line
# per scenario. About 15 minutes on 2 cores; not part of `make test`.
faults: install-test
	STUDIO_FAULTS=1 $(BIN)/pytest tests/faults -s -rA -p no:cacheprovider

lint: install-test
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .studio logs
