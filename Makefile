# Spillway: `make run` and `make test` do all the set-up on a machine with only Python 3.11.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format install fonts migrate seed clean screenshots bench chaos

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "Python 3.11+ is needed")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP) fonts

## A CJK font for the Chinese PDF statements (and browser screenshots): installed with apt-get when
## missing and we are root; otherwise a hint, never a failure. Costs one fc-list when it is there.
fonts:
	@if command -v fc-list >/dev/null 2>&1 && [ -n "$$(fc-list :lang=zh 2>/dev/null)" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing a CJK font for PDF statements: apt-get install fonts-wqy-microhei"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq fonts-wqy-microhei fontconfig >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq fonts-wqy-microhei fontconfig >/dev/null; } || \
	  echo "hint: could not install fonts-wqy-microhei; PDF statement tests will be skipped"; \
	else \
	  echo "hint: no CJK font (fc-list :lang=zh is empty); for PDF statements: sudo apt-get install fonts-wqy-microhei"; \
	fi

migrate: install
	$(PY) manage.py migrate --noinput

seed: migrate
	$(PY) manage.py seed_demo

## Start the web app, a Celery worker with beat, and the partner simulator. Ctrl-C stops all.
run: seed
	$(PY) manage.py devstack

## The whole suite. Set REQUIRE_SERVICES=1 to turn skips for PostgreSQL/Redis/Chromium into failures.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) manage.py check --fail-level WARNING
	$(PY) manage.py makemigrations --check --dry-run

## Benchmarks (bench/): every scenario against PostgreSQL and Redis on loopback, one table, JSON in
## var/bench/. SCALE=smoke (the default, under three minutes, run by CI) or SCALE=full (1M applicants).
SCALE ?= smoke
bench: install
	$(PY) -m bench --scale $(SCALE) $(BENCH_ARGS)

## The fault scenario (bench/chaos.py): 10,000 applicants while workers are killed and Redis and
## PostgreSQL restart (its own throwaway cluster and server), then the invariants. CHAOS_PLAN=smoke: smaller.
CHAOS_PLAN ?= full
chaos: install
	$(PY) -m bench.chaos --plan $(CHAOS_PLAN)

## Refresh the screenshots in docs/ from the browser tests' latest run.
screenshots: install
	$(PY) -m pytest -m browser -q
	mkdir -p docs/screenshots && cp var/screenshots/*.png docs/screenshots/

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) var
