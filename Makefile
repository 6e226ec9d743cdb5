# Two entry points for a fresh machine: `make demo` and `make test`. Both bootstrap .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bayesal-installed
EXTRAS ?= dev,text,images,serve,ray,zarr
# Label Studio, for the integration test of the ML backend, in a venv of its own (it pins Django and NumPy).
LS_VENV ?= .lsvenv
LS_EXE := $(LS_VENV)/bin/label-studio

.PHONY: install demo test lint bench clean labelstudio-env test-labelstudio

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

$(LS_EXE):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q label-studio==1.23.2

labelstudio-env: $(LS_EXE)

# Only the tests that start a real Label Studio (marked `labelstudio`); `make test` skips them unless
# BAYESAL_LABEL_STUDIO names a label-studio executable.
test-labelstudio: $(STAMP) $(LS_EXE)
	BAYESAL_LABEL_STUDIO=$(abspath $(LS_EXE)) BAYESAL_LABEL_STUDIO_REQUIRED=1 $(PY) -m pytest -q -rs -m labelstudio tests/labelstudio

bench: $(STAMP)
	$(PY) benchmarks/update_vs_retrain.py

clean:
	rm -rf $(VENV) $(LS_VENV) demo_output .pytest_cache
