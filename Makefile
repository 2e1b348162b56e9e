# edgesync developer tasks; `make help` lists them.
#
#   make install   .venv with edgesync (editable) and its test and lint tools
#   make test      the whole test suite (unit, API, end to end)
#   make demo      a control plane and two edge agents, three releases, on throwaway data
#   make zipapp    dist/edgesync.pyz (PLATFORM=x86_64|aarch64 for a manylinux build)

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
VENV_PY := $(VENV)/bin/python
# Written after a successful install; newer than setup.cfg and pyproject.toml
# means there is nothing to do.
STAMP := $(VENV)/.edgesync-installed

HOST ?= 127.0.0.1
PORT ?= 8080
DATA_DIR ?= edgesync-data
PLATFORM ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist). The suite mostly waits on real servers, agents and
# databases, not on the CPU: four workers keep it well under 10 minutes on 2 cores.
PYTEST_WORKERS ?= 4
BENCH_ARGS ?=
# The WasmEdge wrapper build/wasmedge.sh provides (tests use it through EDGESYNC_WASMEDGE).
WASMEDGE := .wasmedge/bin/wasmedge

.PHONY: help install test wasmedge examples zipapp serve demo demo-api lint bench clean distclean

help: ## Show this list.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install edgesync[test,lint] (editable); fast when done.

$(STAMP): setup.cfg pyproject.toml
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -e '.[test,lint]'
	@touch $@

test: install wasmedge ## Run the test suite (pytest -q -n 4; PYTEST_WORKERS=1 for one process, PYTEST_ARGS=... to pass more).
	EDGESYNC_WASMEDGE="$${EDGESYNC_WASMEDGE:-$(CURDIR)/$(WASMEDGE)}" $(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

wasmedge: $(WASMEDGE) ## Provide WasmEdge in .wasmedge/ (Debian 13 packages, no system change).

$(WASMEDGE): build/wasmedge.sh
	bash build/wasmedge.sh >/dev/null
	@touch $@

examples: install ## Build examples/build/*.wasm (WAT, and the C function with clang for wasm32-wasi).
	bash build/build_examples.sh

zipapp: install ## Build dist/edgesync.pyz with shiv (PLATFORM=x86_64|aarch64: dist/edgesync-ARCH.pyz).
	$(VENV_PY) build/zipapp.py $(if $(PLATFORM),--platform $(PLATFORM))

serve: install ## Run the control plane on embedded SQLite + folder store in ./edgesync-data.
	$(VENV)/bin/edgesync serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

demo: install ## Control plane + two agents: auto-release, a release through a canary, a failing one rolled back.
	$(VENV_PY) examples/demo.py

demo-api: install ## The API alone over raw HTTP (two nodes played by the script), then a summary.
	$(VENV_PY) examples/demo_api.py

lint: install ## ruff check, ruff format --check and mypy (config in pyproject.toml).
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install ## Run the benchmarks (bench/run_all.py; BENCH_ARGS=--quick for small fleets, short runs).
	$(VENV_PY) bench/run_all.py $(BENCH_ARGS)

clean: ## Remove build output and caches (keeps .venv and ./edgesync-data).
	rm -rf dist build/out .pytest_cache .mypy_cache .ruff_cache demo-data bench/out
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name '*.egg-info' -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too.
	rm -rf $(VENV)
