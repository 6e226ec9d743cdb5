# Two entry points for a fresh machine: `make demo` and `make test`. Both bootstrap .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bayesal-installed
EXTRAS ?= dev,text,images,serve,ray,zarr

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Pinned CPU torch first: an unpinned torch would pull gigabytes of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# Animal-MNIST ships its images in the wheel but declares tensorflow; we only read its files.
	$(PY) -m pip install -q --no-deps animal-mnist==0.4
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bayesal demo --out demo_output

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/update_vs_retrain.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
