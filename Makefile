# One entry point. `make demo` sets up .venv and runs the main job; `make lab` sets up and opens the notebooks in
# JupyterLab; `make test` sets up and tests; `make docs` builds the documentation site into site/ (mkdocs.yml;
# strict: a broken link or reference fails).
# The newest Python that pyproject.toml's requires-python accepts; `make PYTHON=/path/to/python3.x` picks another.
PYTHONS ?= 3.14 3.13 3.12 3.11
PYTHON  ?= $(firstword $(foreach v,$(PYTHONS),$(shell python$(v) -c "" 2>/dev/null && echo python$(v))))
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo lab test test-fast docs sweep benchmark benchmark-scale check-handoffs clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(if $(PYTHON),,$(error no Python $(PYTHONS) found on PATH: install one of them, or run make PYTHON=/path/to/python3.x))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m reapkit.run.lab --register
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(PY) -m reapkit demo

# JupyterLab in this repository, on notebooks/, with the kernel "reapkit" (this .venv) and jupytext pairing; prints
# the address and the ssh port forward for a remote GPU machine. make lab LAB_ARGS="--port 8890 --no-browser"
lab: setup
	$(PY) -m reapkit.run.lab $(LAB_ARGS)

test: setup browser
	$(PY) -m pytest -q -n 2

# The unit layer only (tests/unit: functions and tiny models in-process, about a minute); `make test` runs all three.
test-fast: setup
	$(PY) -m pytest -q -n 2 tests/unit

docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Headless Chromium for tests/acceptance/test_browser.py (Debian's package; Playwright drives it). apt-get runs
# only when it is missing and apt is there; otherwise the browser test is skipped with its reason.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
		&& apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
		|| echo "make: no $(CHROMIUM) (install Debian's chromium as root); tests/acceptance/test_browser.py will be skipped" >&2

# make sweep SWEEP=sweeps/study.yaml   (papermill runs over a grid; results in runs/<name>/)
SWEEP ?= sweeps/ratios.yaml
sweep: setup
	$(PY) -m reapkit sweep $(SWEEP)

# `make benchmark`: the cost of observing, of the single-expert ablation and of a budget-search candidate (a few minutes). `make benchmark-scale`: benchmarks/scale.py,
# a 3.3 GB generated checkpoint under runs/scale (about 8 minutes on 2 cores, 7 GB of RAM for the in-memory runs).
benchmark: setup
	$(PY) benchmarks/observe_overhead.py
	$(PY) benchmarks/all_token_outputs.py
	$(PY) benchmarks/ablation.py
	$(PY) benchmarks/budget_search.py
	@echo "models larger than memory: make benchmark-scale (benchmarks/scale.py, about 8 minutes, 4 GB of disk)"

benchmark-scale: setup
	$(PY) benchmarks/scale.py

# `make check-handoffs`: the pruned demo in vLLM (CPU build), lm-eval, AutoRound W4A16 and llama.cpp (GGUF), each
# in its own environment under .handoffs/ (about 7 GB; the first build takes 10-30 minutes, as llama-cpp-python
# compiles llama.cpp with cmake and g++; reused after). Not part of `make test`.
# Results: runs/handoffs/summary.json and check_handoffs.log; the commands: docs/serving.md.
check-handoffs: setup
	$(PY) scripts/check_handoffs.py

clean:
	rm -rf $(VENV) runs out site
