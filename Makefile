# Two commands do everything on a fresh machine with Python 3.11+:
#   make demo   - create .venv, install, initialise, run a 50-piece batch for `demo`
#   make test   - create .venv with test extras if needed, run the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install install-test chromium bench clean faults

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
	$(BIN)/studio demo --pieces 50 $(if $(VERBOSE),--verbose)

# tests/prefect_server/test_ui.py drives Debian's chromium through playwright (which cannot
# download a browser of its own here): installed when missing and apt-get is usable (CI runs
# as root); elsewhere those tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null \
	  || echo "chromium not installed: the Prefect UI tests will be skipped"; }

test: install-test chromium
	$(BIN)/ruff check .
	$(BIN)/pytest

# the slow fault suite (tests/faults): a real `studio server` on PostgreSQL, process
# workers, S3 and the provider emulators, killed and flooded; prints one [FAULT ...] line
# per scenario. About 15 minutes on 2 cores; not part of `make test`.
faults: install-test
	STUDIO_FAULTS=1 $(BIN)/pytest tests/faults -s -rA -p no:cacheprovider --timeout 1800

lint: install-test
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .studio logs
