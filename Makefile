# One-command entry points. `make up` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STREAMML := $(VENV)/bin/streamml

.PHONY: setup up down status test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml streams/features/native_state.pyx
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

up: setup  ## start the embedded stack with demo traffic
	$(STREAMML) up --demo

down:
	$(STREAMML) down

status:
	$(STREAMML) status

test: setup  ## the whole suite: unit, integration (real Tansu + Redis), e2e
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest tests/unit -q

lint: setup
	$(VENV)/bin/ruff check services streams schemas tests bench

clean:
	rm -rf $(VENV) .streamml .pytest_cache
