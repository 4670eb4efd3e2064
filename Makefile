# layoutdiffuse: the two README commands are `make demo` and `make test`; each sets itself up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export LAYOUTDIFFUSE_DATA ?= $(HOME)/data
# A local copy of the four MNIST .gz files (CI has one beside the checkout); empty = download.
MNIST_SOURCE ?= $(wildcard ../shared/data/mnist)
NOTEBOOKS := $(wildcard notebooks/*.py)

.PHONY: setup setup-demo mnist demo lab test test-fast test-lowest lint notebooks-check notebooks-sync nbval bench clean

# One venv, two install levels with their own stamps: `make demo` installs the package alone (what
# training the toy and writing its grid need); `make test`, `make lab` and the rest add the test,
# notebooks and sd extras. `make test` after `make demo` upgrades the same venv; the full install
# also marks the demo level done.
$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

$(VENV)/.installed-demo: pyproject.toml | $(VENV)/.created
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-full: pyproject.toml | $(VENV)/.created
	$(PY) -m pip install -q -e ".[test,notebooks,sd]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@ $(VENV)/.installed-demo

setup-demo: $(VENV)/.installed-demo

setup: $(VENV)/.installed-full

mnist: setup-demo
	$(PY) data_scripts/download_mnist.py $(if $(MNIST_SOURCE),--from $(MNIST_SOURCE))

## The main job: train the MNIST toy (configs/mnist.json) and write sample grids.
demo: mnist
	$(PY) -m layoutdiffuse train -c configs/mnist.json --overwrite  # the demo starts over each time
	@echo "samples: experiments/mnist/images/ (latest: $$(ls experiments/mnist/images/*.png | tail -1))"

## JupyterLab on the notebooks, in the project's venv (widgets and the drawing canvas work out of the box).
LAB_PORT ?= 8888
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks --ip=127.0.0.1 --port=$(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root)

## The whole suite: unit tests, notebook pairing, and every notebook executed by nbval (quick mode).
test: setup mnist notebooks-check
	$(PY) -m pytest -q tests
	$(MAKE) nbval

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

## The dependency floors: a fresh venv (LOWEST_VENV, default /tmp/layoutdiffuse-lowest) with every
## floor of pyproject.toml installed exactly, then the fast tests in it (tests/lowest_versions.sh).
test-lowest:
	bash tests/lowest_versions.sh

## ruff, configured in pyproject.toml (not yet part of `make test`: the code base predates it).
$(VENV)/.installed-lint: pyproject.toml | $(VENV)/.created
	$(PY) -m pip install -q -e ".[lint]"
	touch $@

lint: $(VENV)/.installed-lint
	$(VENV)/bin/ruff check --statistics .
	$(VENV)/bin/ruff format --check .

nbval: setup
	LAYOUTDIFFUSE_QUICK=1 MPLBACKEND=agg $(PY) -m pytest -q --nbval-lax --nbval-cell-timeout=600 notebooks/*.ipynb

notebooks-check: setup
	@status=0; for py in $(NOTEBOOKS); do nb=$${py%.py}.ipynb; \
	  if [ ! -f $$nb ]; then echo "missing pair: $$nb"; status=1; continue; fi; \
	  if ! diff -q <($(VENV)/bin/jupytext --to py:percent -o - $$nb 2>/dev/null | sed '/jupytext_version/d') <(sed '/jupytext_version/d' $$py) >/dev/null; then \
	    echo "notebook pair drifted: $$py vs $$nb (run: make notebooks-sync)"; status=1; fi; done; exit $$status

## After editing a notebook's .py (the source): rebuild its .ipynb, then normalise the .py from it.
notebooks-sync: setup
	for py in $(NOTEBOOKS); do nb=$${py%.py}.ipynb; \
	  $(VENV)/bin/jupytext --to ipynb $$py -o $$nb && $(VENV)/bin/jupytext --to py:percent $$nb -o $$py; done

bench: setup
	$(PY) benchmarks/bench_mnist.py
	$(PY) benchmarks/bench_layout_attention.py

clean:
	rm -rf experiments lightning_logs .pytest_cache
