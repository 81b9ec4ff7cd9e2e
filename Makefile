# WindFlow. `make run` sets everything up on a fresh machine and serves http://127.0.0.1:8000;
# `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint format test-unit test-integration test-frontend test-browser install env migrate clean frontend bytecode

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# A first run gets a .env with a freshly generated SECRET_KEY (the built-in default is refused).
.env:
	@secret=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))'); \
	umask 077; sed "s|^SECRET_KEY=.*|SECRET_KEY=$$secret|" .env.example > .env; chmod 600 .env; \
	echo "created .env with a new SECRET_KEY"

env: .env

migrate: $(STAMP) .env
	$(VENV)/bin/windflow db upgrade

# The web UI: built into frontend/dist when it is missing or older than its sources (Node is needed
# only then; the server itself never runs Node). `npm ci` installs exactly package-lock.json.
NPM ?= npm
FRONTEND_SOURCES := $(shell find frontend/src -type f 2>/dev/null) frontend/index.html frontend/vite.config.ts \
	frontend/tsconfig.json frontend/package.json frontend/package-lock.json

frontend/node_modules/.installed: frontend/package-lock.json
	@command -v $(NPM) >/dev/null || { echo "Node.js and npm are needed to build the web UI (frontend/dist is missing or stale)"; exit 1; }
	cd frontend && $(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

frontend/dist/index.html: frontend/node_modules/.installed $(FRONTEND_SOURCES)
	cd frontend && $(NPM) run build
	touch $@

frontend: frontend/dist/index.html

# Python's bytecode of the project's own modules, compiled ahead (and again for a changed source): where the
# environment sets PYTHONDONTWRITEBYTECODE, every process would otherwise compile them all from source at its start
# (about 0.9 s of CPU for the backend, a worker or the CLI). Site-packages get theirs from pip.
bytecode: $(STAMP)
	$(PY) -m compileall -q -j 0 backend bench > /dev/null

run: $(STAMP) .env migrate frontend bytecode
	$(PY) -m backend.app.main

# Six streams at once (scripts/test-all.sh): the Celery tests in two (the frontend checks before the second), the
# Docker tests, the rest of the Python suite in two, and the browser tests. Browser tests run in their own pytest
# process: Playwright's sync API and pytest-asyncio's loop clash.
test: $(STAMP) frontend bytecode
	PY=$(PY) bash scripts/test-all.sh

# ruff: the Python code's lint rules and its format (pyproject.toml's [tool.ruff]). `make format` applies both.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# ESLint and Prettier (`npm run lint`), vue-tsc, then vitest.
test-frontend: frontend/node_modules/.installed
	cd frontend && $(NPM) run lint && $(NPM) run typecheck && $(NPM) test

test-browser: $(STAMP) frontend
	$(PY) -m pytest backend/tests/browser -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info frontend/node_modules frontend/dist
