# agg_pipeline: two commands on a fresh machine with Python 3.11+, pip and make.
#   make dev    local PostgreSQL + schema + demo data + Dagster UI at http://127.0.0.1:3000
#   make test   the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: dev test lint bench bench-scale db-stop clean screenshots

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Playwright (a test extra) drives Debian's chromium package: it never downloads a browser.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

dev: $(VENV)/.installed
	$(BIN)/agg-pipeline dev

# InfluxData's Flux parser / type checker (WASM, npm) validates every generated Flux query.
FLUXCHECK := agg_pipeline_tests/flux/node_modules/.installed
$(FLUXCHECK): agg_pipeline_tests/flux/package.json
	@if command -v npm >/dev/null; then \
		npm ci --silent --no-audit --no-fund --prefix agg_pipeline_tests/flux && touch $@; \
	else echo "npm not found: the Flux validation tests will be skipped"; fi

# Two workers, one test file each at a time (--dist loadfile: a file's session fixtures and
# its daemon stay in one process). The daemon e2e file mostly waits on the daemon, so the
# rest of the suite runs beside it: measured 13 min with 2 workers vs 21.5 min serial on
# the same loaded 2-core machine. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: $(VENV)/.installed $(FLUXCHECK)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The README's pictures (docs/screenshots/*.png), taken by the browser tests in headless
# Chromium (apt-get install -y chromium) against `dagster dev` on a day of demo data.
screenshots: $(VENV)/.installed
	AGG_PIPELINE_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -p no:cacheprovider \
		-q agg_pipeline_tests/e2e/test_ui.py

lint: $(VENV)/.installed
	$(BIN)/ruff check agg_pipeline agg_pipeline_tests benchmarks
	$(BIN)/ruff format --check agg_pipeline agg_pipeline_tests benchmarks

db-stop: $(VENV)/.installed
	$(BIN)/agg-pipeline db stop

clean:
	-$(BIN)/agg-pipeline db stop
	rm -rf $(VENV) .local agg_pipeline_tests/flux/node_modules

# Every section but the fleet, floor and pipeline interleaved (side-by-side pairs): the
# main day, and the curve's day, week and last complete month (3 devices x 5 fields at 1 Hz).
bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.bench --interleave --json bench-results.json

# The fleet, which `make bench` leaves out (it seeds its own data set): 2,000 devices x 5
# fields at 0.01 Hz for 2026-11-01, the main set's readings a day over 100x the series.
bench-scale: $(VENV)/.installed
	$(BIN)/python -m benchmarks.bench --only fleet --start 2026-11-01 --interleave \
		--reps 1 --json bench-scale-results.json
