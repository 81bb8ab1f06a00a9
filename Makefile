# The README's commands. Each target creates its virtual environment and installs what it
# needs by itself: .venv holds the newest supported versions (Python 3.12, constraints.txt),
# .venv-py311 the oldest (Python 3.11, jax 0.10.2, constraints-py311.txt) and the PyTorch
# peers of the benchmarks, whose CPU wheel installs offline for Python 3.11 only.
VENV := .venv
PY := $(VENV)/bin/python
VENV_OLD := .venv-py311
PY_OLD := $(VENV_OLD)/bin/python
# Re-install whenever the dependency list or the pins change.
STAMP := $(VENV)/.installed
STAMP_OLD := $(VENV_OLD)/.installed
STAMP_BENCH := $(VENV_OLD)/.installed-bench

# The interpreter of version $(1) (e.g. 3.12): python3.12 on PATH if it runs (a pyenv shim of a
# version that is not selected does not), else the newest pyenv installation of it.
comma := ,
find_python = $(shell for p in python$(1) $$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/$(1).*/bin/python$(1) 2>/dev/null | sort -rV); do "$$p" -c 'import sys; sys.exit(sys.version_info[:2] != ($(subst .,$(comma),$(1))))' >/dev/null 2>&1 && { command -v "$$p"; break; }; done)
PYTHON ?= $(call find_python,3.12)
PYTHON_OLD ?= $(call find_python,3.11)

# $(call venv,VENV,PYTHON,VERSION,NAME): (re)create VENV with PYTHON, the value of variable NAME,
# unless VENV already runs that Python; stop with a clear message when there is no such interpreter.
define venv
@test -n "$(2)" || { echo "error: Python $(3) not found: neither python$(3) on PATH nor a pyenv installation ($${PYENV_ROOT:-$$HOME/.pyenv}/versions/$(3).*). Install it (e.g. pyenv install $(3)) or name it: make $(MAKECMDGOALS) $(4)=/path/to/python$(3)" >&2; exit 1; }
@[ "$$($(1)/bin/python -c 'import sys; print(sys.version_info[:2])' 2>/dev/null)" = "$$($(2) -c 'import sys; print(sys.version_info[:2])')" ] || $(2) -m venv --clear $(1)
$(1)/bin/python -m pip install --quiet --upgrade pip
endef

.PHONY: demo kernel-demo figures test test-slow test-oldest lint bench results clean

$(STAMP): pyproject.toml constraints.txt
	$(call venv,$(VENV),$(PYTHON),3.12,PYTHON)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[experiments,accelerators,dev]'
	touch $(STAMP)

# The oldest supported versions: the package and the test tools, without the runner.
$(STAMP_OLD): pyproject.toml constraints-py311.txt
	$(call venv,$(VENV_OLD),$(PYTHON_OLD),3.11,PYTHON_OLD)
	$(PY_OLD) -m pip install --quiet -c constraints-py311.txt -e '.[dev]'
	touch $(STAMP_OLD)

$(STAMP_BENCH): $(STAMP_OLD)
	$(PY_OLD) -m pip install --quiet -c constraints-py311.txt -e '.[experiments,dev,bench]'
	touch $(STAMP_BENCH)

# The main job: RNNsearch on the offline English-Spanish data, tiny preset (~10 min on 2 cores).
# Run again, it resumes (or, when finished, re-evaluates) the same run: --resume once runs/demo
# holds one (--resume on a directory without a run is an error).
demo: $(STAMP)
	$(PY) -m experiments.run translate --workdir runs/demo \
		$$(if [ -e runs/demo/config.json ] || [ -d runs/demo/checkpoints ]; then echo --resume; fi)
	@echo 'next: translate your own sentence and draw its alignment with'
	@echo '  $(PY) -m experiments.attend runs/demo --input "the european economic area"'

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

# The test suite, lint included (~10 min on 2 cores). CI runs this, then test-slow and
# test-oldest.
test: lint
	$(PY) -m pytest -n 2 -m "not slow"

# The tests marked slow (multi-process runs, whole benchmark commands): a few minutes more.
test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -m slow

# The kernel and layer tests on the oldest supported versions (Python 3.11, jax 0.10.2).
test-oldest: $(STAMP_OLD)
	$(PY_OLD) -m pytest -n 2 tests/kernels tests/nn

# The quick kernel benchmark (a few minutes): the zoo against tokamax, jax.nn, flax and PyTorch
# SDPA, in the Python 3.11 environment, where the bench extra's torch installs. Every
# measurement runs alike: $(PY_OLD) -m benchmarks.MEASUREMENT --mode MODE (see --help), for
# kernels, models, decoding, scaling and devices.
bench: $(STAMP_BENCH)
	$(PY_OLD) -m benchmarks.kernels --mode quick

# benchmarks/RESULTS.md and the README's headline from the measurements' results.json files:
# every stored target met or missed, the tables, plots and machines. Measures nothing.
results: $(STAMP)
	$(PY) -m benchmarks.report

clean:
	rm -rf $(VENV) $(VENV_OLD) runs .pytest_cache .mypy_cache .ruff_cache
