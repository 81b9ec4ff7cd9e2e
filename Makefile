# WindFlow. `make run` sets everything up on a fresh machine and serves http://127.0.0.1:8000;
# `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-unit test-integration install env migrate clean

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

run: $(STAMP) .env migrate
	$(PY) -m backend.app.main

test: $(STAMP)
	$(PY) -m pytest backend/tests -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info
