# The one entry point for developers and CI. `make test` works on a fresh machine that has Python 3
# and PostgreSQL's server package: it builds .venv, installs the package with its test and dev extras,
# lints, type-checks and runs the whole test suite against real services it starts itself.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install lint typecheck docs docs-serve wheel-check test unit integration e2e bench demo clean

help:
	@echo "make test        lint + mypy + docs + wheel check + every test (unit, integration, e2e)"
	@echo "make docs        build the documentation site strictly into site/ (any warning fails)"
	@echo "make docs-serve  preview the documentation site on http://127.0.0.1:8000"
	@echo "make wheel-check build sdist + wheel, install the wheel in a fresh venv and use it"
	@echo "make unit        unit tests only"
	@echo "make integration integration tests only"
	@echo "make e2e         end-to-end tests against live Airflow processes"
	@echo "make bench       benchmarks, side by side with Airflow's own triggers"
	@echo "make demo        run the example DAGs in a local Airflow (ARGS=--keep-running to keep it up)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[test,dev,docs]"
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check airflow_trigger_kit tests dags benchmarks devtools
	$(BIN)/ruff format --check airflow_trigger_kit tests dags benchmarks devtools

typecheck: $(STAMP)
	$(BIN)/mypy

# The site: MkDocs Material + mkdocstrings, strict (see docs/documentation.md).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# What `pip install airflow-trigger-kit` gives a user, checked in a fresh virtualenv (devtools/wheel_check.py).
wheel-check: $(STAMP)
	$(BIN)/python -m devtools.wheel_check

test: lint typecheck docs wheel-check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

e2e: $(STAMP)
	$(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

# A local Airflow with the example DAGs (SQLite, moto's S3, a throwaway PostgreSQL when installed);
# ARGS=--keep-running leaves it up on http://localhost:8080 until Ctrl-C. See devtools/demo.py.
demo: $(STAMP)
	$(BIN)/python -m devtools.demo $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_directories $(ARGS)
	$(BIN)/python -m benchmarks.bench_postgres_waits
	$(BIN)/python -m benchmarks.bench_postgres
	$(BIN)/python -m benchmarks.bench_s3_memory $(ARGS)
	$(BIN)/python -m benchmarks.bench_s3_waits $(ARGS)
	$(BIN)/python -m benchmarks.bench_latency_dir
	$(BIN)/python -m benchmarks.bench_latency_pg
	$(BIN)/python -m benchmarks.bench_latency_s3 $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist site
