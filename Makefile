# One entry point. `make demo` sets up .venv and runs the main job; `make test` sets up and tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo study test benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(PY) -m reapkit demo

# The REAP study (notebook 05: methods vs compression, calibration sensitivity) on the demo model,
# about 2 minutes on 2 cores; tables and summary.md in runs/demo/05_study, figures in figures/05_study.
study: setup
	$(PY) -c "from reapkit.sweep import run_notebook; run_notebook('notebooks/05_study.ipynb', {'output_dir': 'runs/demo/05_study', 'figures_dir': 'figures/05_study', 'cache_dir': 'runs/demo/cache'}, 'runs/demo/05_study')"

test: setup
	$(PY) -m pytest -q -n 2

benchmark: setup
	$(PY) benchmarks/observe_overhead.py

clean:
	rm -rf $(VENV) runs out
