# Premium Customer Notification System — the main commands are `make up`, `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
UV_VERSION ?= 0.13.8
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/plugins

.PHONY: help venv tools up down status demo test lint unit integration e2e bench compose-check clean

help:
	@echo "make up     - the product running locally: simulators and Airflow (UI at http://127.0.0.1:8080)"
	@echo "make down   - stop everything make up started"
	@echo "make demo   - make up, then November 2025 through the scheduler (a backfill) with a summary"
	@echo "make test   - ruff (with AIR rules) and the whole pytest suite against real PostgreSQL"
	@echo "make bench  - fetch-stage benchmark (BENCH_ACCOUNTS=100000 by default)"

$(VENV)/.installed: requirements.txt
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	@test -x $(PY) || uv venv --quiet -p $(PYTHON) $(VENV)
	uv pip install --quiet -p $(PY) -r requirements.txt
	@touch $@

venv: $(VENV)/.installed

# The compose file check needs Debian's docker-compose (offline `config`); no Docker engine is used.
tools:
	@command -v docker-compose >/dev/null 2>&1 || { \
		echo "installing docker-compose (Debian package) for the compose file check"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
# The console's browser test drives Debian's chromium with Playwright (its own browser download cannot work here).
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium (Debian package) for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The local stack (scripts/stack.py): state and logs in .run/up/, Airflow home .airflow/demo/.
up: venv
	@bash scripts/run.sh scripts/stack.py up

down:
	@bash scripts/run.sh scripts/stack.py down

status:
	@bash scripts/run.sh scripts/stack.py status

demo: venv
	@bash scripts/run.sh scripts/demo.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: venv tools lint
	@$(PY) -m premium.cli check-postgres
	$(PY) -m pytest -p no:cacheprovider -q $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -q tests/unit

integration: venv
	$(PY) -m pytest -q tests/integration

e2e: venv
	$(PY) -m pytest -q tests/e2e

bench: venv
	$(PY) bench/bench_fetch.py $(BENCH_ARGS)
	$(PY) bench/bench_sms.py $(BENCH_SMS_ARGS)
	$(PY) bench/bench_poll.py

compose-check: tools
	docker-compose -f docker-compose.yaml config -q

clean:
	rm -rf .run .airflow/test .pytest_cache
