# Two entry points: `make app` (install and open the app on the bundled demo)
# and `make test` (install with dev extras and run the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch: a range, never a pin above what the machine can have; pip picks the newest allowed.
PIP    := $(BIN)/python -m pip
# setuptools announces every editable install of a package-dir mapping ("Editable installation": a folder named
# like the package could shadow it). The root package lives in src/essence/ for that reason (DESIGN §4), so the
# notice says nothing new; only that message is silenced, every other build warning still shows.
EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

.PHONY: install install-dev app test test-fast lint typecheck browser-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel

install: $(BIN)/python
	$(EDITABLE) $(PIP) install -q -e .

install-dev: $(BIN)/python
	$(EDITABLE) $(PIP) install -q -e ".[dev]"

app: install
	$(BIN)/essence app

lint: install-dev
	$(BIN)/ruff check .

browser-deps:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "chromium could not be installed: the browser test will report it"; }

# The type checker reads the tree as the installed package `essence` (core/ is essence.core, ...): mypy does not
# follow setuptools' editable-install finder, so a tree of links with that layout is made under build/.
TYPED := build/typecheck/essence
typecheck: install-dev
	@rm -rf $(TYPED) && mkdir -p $(TYPED)
	@for f in src/essence/*; do ln -s "$$PWD/$$f" $(TYPED)/; done
	@for d in core storage app sample_data; do ln -s "$$PWD/$$d" $(TYPED)/$$d; done
	cd build/typecheck && ../../$(BIN)/python -m mypy --config-file ../../pyproject.toml --cache-dir ../mypy-cache -p essence.core -p essence.storage

# The suite runs on every core (pytest-xdist: one worker per logical CPU, at most 8), a test file at a time per
# worker so that a file's shared setup is built once; the longest files are handed out first (tests/conftest.py).
# Each worker and each process a test starts computes on one thread (tests/conftest.py sets OMP_NUM_THREADS).
PARALLEL := -n logical --maxprocesses=8 --dist loadfile --no-loadscope-reorder

test: install-dev browser-deps typecheck
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PARALLEL)

# The quick tier for local work: no slow end-to-end or browser test (CI runs those through `make test`).
test-fast: install-dev
	$(BIN)/python -m pytest -q $(PARALLEL) -m "not slow and not browser"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
