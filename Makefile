# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-faults bench lint typecheck check clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Whole system for a laptop: embedded Postgres/Redis when DATABASE_URL/REDIS_URL are unset,
## migrations, G2A simulator, web, worker and scheduler. Ctrl-C stops everything.
run: $(STAMP)
	$(BIN)/keysync up

## The test suite against real Postgres and Redis (TEST_DATABASE_URL/TEST_REDIS_URL, or
## throwaway servers started by the suite itself).
PYTEST_ARGS ?= -n 2
test: $(STAMP) browser
	$(BIN)/pytest -q $(PYTEST_ARGS)

## Debian's Chromium for the console's browser tests (tests/browser): installed when missing
## (as root), otherwise the command to run is printed; the tests fail when CI is set.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	else echo "browser tests need Chromium: sudo apt-get install chromium" >&2; fi

bench: $(STAMP)
	@for script in bench/[!_]*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy --strict services jobs worker web keysync

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
