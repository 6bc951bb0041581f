# Regent — two commands do all set-up: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
REGENT_DATA_DIR ?= var
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/regent
TEST_REDIS_URL ?= redis://127.0.0.1:6379
PYTEST_ARGS ?=

export PORT REGENT_DATA_DIR

.PHONY: run serve test lint worker beat format venv clean

# The virtualenv is rebuilt only when a lock file changes, so a second `make run` is fast.
$(BIN)/.installed-runtime: requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	@touch $@

$(BIN)/.installed-dev: requirements-dev.lock $(BIN)/.installed-runtime
	$(BIN)/pip install --quiet -r requirements-dev.lock
	@touch $@

venv: $(BIN)/.installed-dev

run: $(BIN)/.installed-runtime
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --no-input -v 0
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py ensure_demo_admin
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py runserver --nostatic 127.0.0.1:$(PORT)

test: $(BIN)/.installed-dev
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=1 REGENT_DATA_DIR=$$(mktemp -d) $(BIN)/python manage.py check
	DEBUG=1 REGENT_DATA_DIR=$$(mktemp -d) $(BIN)/python manage.py makemigrations --check --dry-run

format: $(BIN)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The production web server (granian), configured by the environment: docs/OPERATIONS.md.
serve: $(BIN)/.installed-runtime
	$(BIN)/python -m registry_site.serve

worker: $(BIN)/.installed-runtime
	$(BIN)/celery -A registry_site worker --loglevel=INFO -P threads -c 4

beat: $(BIN)/.installed-runtime
	$(BIN)/celery -A registry_site beat --loglevel=INFO

clean:
	rm -rf $(VENV) .pytest_cache
