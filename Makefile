# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# TORCH pins the PyTorch release installed first: a CPU build of it lies on this project's
# machines (so this takes seconds there); elsewhere pip fetches the platform's default build
# (CUDA on Linux x86-64). Override it for another build, e.g.
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# setuptools' "Editable installation" warning (folders named like the packages may shadow them) is
# silenced: hmrnn/ and datamodules/ in the working directory are the packages being installed.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/python -m pip install -q $(TORCH)
	PYTHONWARNINGS="ignore:Editable installation" $(VENV)/bin/python -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m hmrnn.train experiment=demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
