# Switchyard — `make run` starts everything, `make test` runs the whole suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000

# Django 6 needs Python 3.12+: use the first suitable interpreter on PATH (pyenv included).
PYTHON ?= $(shell for p in python3.12 python3.13 python3; do \
	  for v in "" 3.12 3.13; do \
	    if PYENV_VERSION=$$v $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	      echo "env PYENV_VERSION=$$v $$p"; exit 0; fi; \
	  done; done; \
	  for d in $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3; do [ -x $$d ] && echo $$d && exit 0; done)

.PHONY: help install upgrade run test lint bench clean-var browser-deps

help:
	@echo "make run    start web, worker, beat, replay fleet and demo data (PORT=$(PORT))"
	@echo "make test   run the whole test suite against a real PostgreSQL"
	@echo "make lint   ruff (lint + format check) and mypy"
	@echo "make bench  run the benchmarks; results in bench/results/"
	@echo "make upgrade  refresh requirements.txt to the newest allowed versions, then make test"

# Installs come from requirements.txt: exact versions with hashes (uv pip compile --universal).
$(VENV)/.installed: requirements.txt
	@if [ -z "$(PYTHON)" ]; then \
	  echo "Switchyard needs Python 3.12 or newer (Django 6); none was found on PATH or in pyenv."; \
	  echo "Install one, or point make at it: make run PYTHON=/path/to/python3.12"; exit 1; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements.txt
	@touch $@

install: $(VENV)/.installed

LOCK_CMD := $(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal \
	--python-version 3.12 --generate-hashes --quiet -o requirements.txt

# Newest versions pyproject.toml allows, written to the lock, installed exactly, then tested.
upgrade: install
	$(LOCK_CMD) --upgrade
	$(VENV)/bin/uv pip sync --python $(PY) --require-hashes requirements.txt
	@touch $(VENV)/.installed
	$(MAKE) test

run: install
	PORT=$(PORT) $(PY) -m controlplane.stack run

# Browser tests drive Debian's chromium through Playwright (no browser downloads here).
browser-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need Debian's chromium: sudo apt-get install chromium"; exit 1; fi; \
	fi

test: install browser-deps
	$(PY) -m controlplane.stack exec $(PY) manage.py makemigrations --check --dry-run
	DJANGO_SECRET_KEY=$$(head -c 48 /dev/urandom | base64 | tr -d '\n') DJANGO_DEBUG=0 \
	  DJANGO_HTTPS=1 DJANGO_ALLOWED_HOSTS=switchyard.example.com \
	  $(PY) manage.py check --deploy --fail-level WARNING
	$(PY) -m controlplane.stack test $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

bench: install
	$(PY) -m controlplane.stack exec $(PY) bench/run_all.py

clean-var:
	rm -rf var/
