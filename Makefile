# One-command entry points. `make demo` and `make test` work on a fresh machine with Python 3.11, Node and npm.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: setup demo serve check-config test test-fast reliability bench lint clean

$(STAMP): requirements.txt pyproject.toml package.json
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -e .  # the project itself, for the `mlops` command
	$(PIP) install --quiet $$($(PY) -c "import tomllib;print(' '.join(repr(d) for d in tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['dev']))" | tr -d "'")
	npm install --silent --no-audit --no-fund
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m shared.local.demo

PORT ?= 7071
serve: $(STAMP)
	@$(PY) -m shared.local serve --port $(PORT)

# Every MLOPS_* setting checked at once (exit 2 when one must be fixed).
check-config: $(STAMP)
	@$(PY) -m shared.local check-config

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The reliability suite at full size (make test runs it reduced), then its figures into docs/reliability.md.
reliability: $(STAMP)
	RELIABILITY_SCALE=full $(PY) -m pytest -q tests/reliability
	$(PY) -m tests.reliability.figures

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Cold start, throughput and endpoint reads into docs/benchmarks.md, then the drift benchmark into docs/benchmarks-drift.md.
bench: $(STAMP)
	$(PY) bench/report.py
	$(PIP) install --quiet $$($(PY) -c "import tomllib;print(' '.join(repr(d) for d in tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['bench']))" | tr -d "'")
	$(PY) bench/drift.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) node_modules .mlops .demo .pytest_cache .reliability
