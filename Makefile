# Two commands on a fresh machine: `make demo` and `make test` (both create .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export ENSEMBLE_PLATFORM_HOME ?= $(CURDIR)/.ensemble_platform
export DAGSTER_HOME := $(ENSEMBLE_PLATFORM_HOME)/dagster
# Keep BLAS from oversubscribing the two cores alongside the models' own n_jobs.
export OMP_NUM_THREADS ?= 2

.PHONY: install browser demo lint test ui mlflow-ui bench clean stack stack-stop

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/ensemble-platform demo

# Headless Chromium for the model-card browser test (Debian package; skipped where it cannot install).
browser:
	@scripts/install_browser.sh

# Lint and import order (ruff), one-way floors and a Dagster-free core (import-linter), the core's types (mypy).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: install browser lint
	$(BIN)/pytest

# The UI's Dagster settings live outside the platform home (its storage stays in the home): every
# process `dagster dev` starts reads $$DAGSTER_HOME/dagster.yaml, and settings can run code.
UI_INSTANCE ?= $(CURDIR)/.dagster-ui

ui: install
	@echo "MLflow UI on the same store: make mlflow-ui"
	$(BIN)/python -m ensemble_platform.instance_settings ui $(UI_INSTANCE)
	DAGSTER_HOME=$(UI_INSTANCE) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dagster dev -w workspace.yaml

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(ENSEMBLE_PLATFORM_HOME)/mlflow/mlflow.db \
		--default-artifact-root $(ENSEMBLE_PLATFORM_HOME)/mlflow/artifacts

bench: install
	$(BIN)/python bench/bench_lifecycle.py
	$(BIN)/python bench/bench_release.py
	$(BIN)/python bench/bench_sensors.py
	$(BIN)/python bench/bench_shadow.py --gc-freeze

# The production-shaped stack natively (PostgreSQL, MLflow server, Dagster webserver/daemon/code
# server on 127.0.0.1; see docker/README.md): `eval "$$(scripts/stack.sh env)"` points the CLI at it.
stack: install
	STACK_BIN=$(CURDIR)/$(BIN) scripts/stack.sh start

stack-stop:
	scripts/stack.sh stop

clean:
	rm -rf $(ENSEMBLE_PLATFORM_HOME)
