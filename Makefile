# The operator's front door. `make deploy` then `make test` on a fresh Debian 12 host (root).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip
INVENTORY ?= inventory/local.py

.PHONY: deploy test venv lint clean-venv

# Creates the venv only when pyproject.toml changed since the last install.
$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }
	@python3 -c 'import venv, ensurepip' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv; }
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

deploy: venv
	$(VENV)/bin/pyinfra -y $(INVENTORY) deploy.py

test: deploy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/squawk --config=schema/.squawk.toml schema/migrations/*.sql

clean-venv:
	rm -rf $(VENV)
