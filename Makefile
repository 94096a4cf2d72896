# Two entry points: `make app` (install and open the app on the bundled demo)
# and `make test` (install with dev extras and run the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch: a range, never a pin above what the machine can have; pip picks the newest allowed.
PIP    := $(BIN)/python -m pip

.PHONY: install install-dev app test lint browser-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel

install: $(BIN)/python
	$(PIP) install -q -e .

install-dev: $(BIN)/python
	$(PIP) install -q -e ".[dev]"

app: install
	$(BIN)/essence app

lint: install-dev
	$(BIN)/ruff check .

browser-deps:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "chromium could not be installed: the browser test will report it"; }

test: install-dev browser-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
