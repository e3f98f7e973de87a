# Two commands set everything up on a fresh machine with Python 3.11:
#   make train   create .venv, install, train the main experiment (Moving MNIST)
#   make test    create .venv, install, run the test suite
#   make lint    ruff, and the layer contracts of pyproject.toml (import-linter)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXPERIMENT ?= moving_mnist

.PHONY: install train test lint

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) train.py experiment=$(EXPERIMENT)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
