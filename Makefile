# Entry points (SPEC §9). Every target installs what it needs: Python deps from uv.lock into
# .venv, control-plane binaries into a per-version cache outside the repo.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: help setup tools run test test-unit test-integration test-e2e lint bench deploy undeploy images kind-e2e clean

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(UV):
	@echo "[setup] uv not found; installing uv $(UV_VERSION) with pip"
	$(PYTHON) -m pip install --quiet --user "uv==$(UV_VERSION)" || $(PYTHON) -m pip install --quiet --user --break-system-packages "uv==$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

setup: $(VENV)/.synced ## create .venv from the lock file

tools: setup ## build or locate etcd, kube-apiserver, kubectl, helm (progress shown)
	$(PY) -m localkube tools

run: tools ## start localkube, the operator and the four sample bots
	$(PY) -m localkube run

test: tools ## every offline test: unit, integration (real API server), e2e
	$(PY) -m pytest tests

test-unit: setup ## unit tests only (no cluster)
	$(PY) -m pytest tests/unit

test-integration: tools
	$(PY) -m pytest tests/integration

test-e2e: tools
	$(PY) -m pytest tests/e2e

HELM_BIN = $(PY) -c 'from localkube.binaries import require_binary as r; print(r("helm"))'

lint: tools ## ruff, mypy, import contracts, helm lint, CRD/chart agreement
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	"$$($(HELM_BIN))" lint --strict helm/tradingbot-operator
	diff -u crds/tradingbots.trading.r7.dev.yaml helm/tradingbot-operator/crds/tradingbots.trading.r7.dev.yaml

bench: tools ## benchmarks; results written to docs/benchmarks.md
	$(PY) -m benchmarks

RELEASE ?= tb
RELEASE_NAMESPACE ?= tradingbot-system
IMAGE ?= ghcr.io/r7/tradingbot:0.1.0

deploy: tools ## helm upgrade --install into the current kube context
	"$$($(HELM_BIN))" upgrade --install $(RELEASE) helm/tradingbot-operator \
	  --namespace $(RELEASE_NAMESPACE) --create-namespace

undeploy: tools ## helm uninstall (keeps the CRD, bot state and the audit volume)
	"$$($(HELM_BIN))" uninstall $(RELEASE) --namespace $(RELEASE_NAMESPACE)

images: ## build the image (operator and bot share it; needs Docker, not used by tests)
	docker build -f bot_image/Dockerfile -t $(IMAGE) .
	docker tag $(IMAGE) $(subst /tradingbot:,/tradingbot-operator:,$(IMAGE))

kind-e2e: tools ## full e2e on kind (needs Docker and kind; opt-in)
	IMAGE=$(IMAGE) tests/kind/run.sh

clean: ## remove .venv and local cluster data (the binary cache is kept)
	-$(PY) -m localkube down
	rm -rf $(VENV) .local
