# The README's commands. Each target creates .venv and installs what it needs by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install whenever the dependency list or the pins change.
STAMP := $(VENV)/.installed

.PHONY: demo kernel-demo figures test test-slow lint bench results clean

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

# The README gallery in docs/figures/, drawn from trained models: trains the three tiny runs
# it needs into runs/figures/ unless they are finished (~35 min on 2 cores), then redraws.
figures: $(STAMP)
	$(PY) -m experiments.figures

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The test suite, lint included (~10 min on 2 cores). CI runs this, then test-slow.
test: lint
	$(PY) -m pytest -n 2 -m "not slow"

# The tests marked slow (multi-process runs, whole benchmark commands): a few minutes more.
test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -m slow

# A quick kernel benchmark against jax.nn and PyTorch SDPA (installs the bench extra).
# The full sweep: $(PY) -m benchmarks.kernels --mode full; issue-6 targets: --mode targets.
bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(PY) -m benchmarks.kernels --mode quick

# benchmarks/RESULTS.md from the benchmarks' results.json files: the issues' targets met or
# missed, the tables, plots and machines. Runs no benchmark and needs no torch.
results: $(STAMP)
	$(PY) -m benchmarks.report

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
