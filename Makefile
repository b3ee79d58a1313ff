# contrastkit: one command to set up and run the demo, one to set up and test.
# Everything the project needs is installed from here (Python packages into .venv,
# Debian data packages with apt-get); nothing installed by hand is assumed.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip
STAMP       := $(VENV)/.contrastkit-installed
# Real datasets and fonts used by the loaders, tests and recipes (see docs/data.md), and the
# headless browser the search page's tests drive (docs/serve.md).
APT_PACKAGES := dataset-fashion-mnist wordnet-base sword-text-kjv sword-text-web libsword-utils \
                dict-foldoc fonts-noto-color-emoji chromium chromium-driver fonts-noto-cjk fonts-arphic-uming fonts-arphic-ukai fonts-wqy-microhei fonts-wqy-zenhei fonts-ipafont-gothic fonts-ipafont-mincho fonts-hanazono fonts-babelstone-han espeak-ng
# Tests use both cores; torch gets one thread per worker so workers do not fight.
PYTEST_WORKERS ?= 2

.PHONY: setup system-data demo test bench lint format clean

setup: $(STAMP) system-data

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned, so that no other package pulls a CUDA build of it.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[all,test]"
	touch $@

system-data:
	@bash scripts/install_system_data.sh $(APT_PACKAGES)

demo: setup
	$(VENV)/bin/contrastkit demo

test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15

# The index rows measure the demo's trained embeddings: the demo runs first when its index is missing.
DEMO_INDEX := runs/simclr_fashion_mnist_demo/index/corpus.ckindex

bench: setup
	test -f $(DEMO_INDEX) || $(VENV)/bin/contrastkit demo
	$(PY) benchmarks/run.py

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info runs .bench
