# The README's commands. Each target creates .venv and installs what it needs by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install whenever the dependency list or the pins change.
STAMP := $(VENV)/.installed

.PHONY: demo kernel-demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: RNNsearch on the offline English-Spanish data, tiny preset (~10 min on 2 cores).
# Run again, it resumes (or, when finished, re-evaluates) the same run.
demo: $(STAMP)
	$(PY) -m experiments.run translate --workdir runs/demo --resume

# A one-minute tour of the kernels.
kernel-demo: $(STAMP)
	$(PY) -m experiments.kernel_demo --out runs/kernel_demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The whole test suite, lint included. CI runs exactly this.
test: lint
	$(PY) -m pytest -n 2

# A quick kernel benchmark against jax.nn and PyTorch SDPA (installs the bench extra).
# The full sweep: $(PY) -m benchmarks.kernels --mode full; issue-6 targets: --mode targets.
bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(PY) -m benchmarks.kernels --mode quick

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
