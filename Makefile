# Two commands for a new user:  `make repro` (set up on first use, then run the pipeline)
#                               `make test`  (set up on first use, then run the test suite)
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
DATASET_DIR := /usr/share/datasets/fashion-mnist
# The browser that tests/test_web.py drives with Playwright (Playwright's own browser download is not used).
CHROMIUM := /usr/bin/chromium
WEB_PORT ?= 8000

# Every command below, and every stage command that `dvc repro` starts (`python3 stages/...`), runs with the
# venv first on PATH, whatever the calling shell has: no activation needed for make's own targets.
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: setup dataset browser postgres repro tune test docs node-example web-example web bench onnxruntime-gpu onnxruntime-cpu clean-venv

setup: $(STAMP)

# Reinstall when the pins change. Only packages come from the registries; data comes from `dvc repro`.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@$(MAKE) --no-print-directory dataset
	@$(MAKE) --no-print-directory browser
	@$(MAKE) --no-print-directory postgres
	touch $(STAMP)

# Debian's dataset-fashion-mnist where we may install it; otherwise the download stage uses the mirrors.
dataset:
	@if [ -d $(DATASET_DIR) ]; then \
	  echo "dataset: using $(DATASET_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "dataset: could not install dataset-fashion-mnist; the download stage will try the HTTP mirrors"; \
	else \
	  echo "dataset: not root or no apt: run 'sudo apt-get install dataset-fashion-mnist', or let the"; \
	  echo "         download stage fetch the files from the HTTP mirrors listed in params.yaml"; \
	fi

# Debian's chromium for the browser page's test, where we may install it; otherwise that test is skipped.
browser:
	@if [ -x $(CHROMIUM) ]; then \
	  echo "browser: using $(CHROMIUM)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "browser: could not install chromium; tests/test_web.py will be skipped"; \
	else \
	  echo "browser: not root or no apt: run 'sudo apt-get install chromium' to test the browser page"; \
	  echo "         (tests/test_web.py is skipped without it)"; \
	fi

# Debian's PostgreSQL server, for the test of a study shared through a database (tests/test_tune.py starts its
# own server on a loopback port); fmnist-tune itself needs no database (its default storage is a file).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "postgres: using $$(ls -d /usr/lib/postgresql/*/bin | tail -1)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y -q postgresql >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1; } || \
	  echo "postgres: could not install postgresql; the PostgreSQL test of fmnist-tune will be skipped"; \
	else \
	  echo "postgres: not root or no apt: run 'sudo apt-get install postgresql' to test studies shared through"; \
	  echo "          PostgreSQL (that test is skipped without it)"; \
	fi

repro: setup
	dvc repro

# The default hyperparameter search (docs/tuning.md): the GRU's recipe, one trial per core at a time, on the
# prepared data. A rerun continues the study. Other studies: fmnist-tune --help.
TUNE_MODEL ?= gru
TUNE_TRIALS ?= 30
tune: setup
	dvc repro prepare
	fmnist-tune --model $(TUNE_MODEL) --trials $(TUNE_TRIALS) --jobs auto

NPM := $(shell command -v npm 2>/dev/null)
NODE_STAMP := examples/node/node_modules/.installed
WEB_STAMP := examples/web/node_modules/.installed
NPM_STAMPS := $(if $(NPM),$(NODE_STAMP) $(WEB_STAMP))
# The Node.js example's dependencies (CPU build only: no CUDA download), and the browser page's (onnxruntime-web,
# served from examples/web/node_modules).
NODE_NPM_CI := cd examples/node && ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci --no-audit --no-fund
WEB_NPM_CI := cd examples/web && npm ci --no-audit --no-fund

# The whole suite, the Node.js example's and the browser page's tests included: their npm packages are
# installed first where npm is present (again only when a package-lock.json changes). Without npm, or when
# npm ci fails (offline), those tests are skipped and their skip reason says what is missing.
test: setup $(NPM_STAMPS)
	python -m pytest

# The tables of README.md and docs/ that quote params.yaml and results/ (between `<!-- generated: ... -->` lines),
# written from those files and from what pytest collects; tests/test_docs.py fails while a committed one differs.
docs: setup
	python docs/generate.py

$(NODE_STAMP): examples/node/package.json examples/node/package-lock.json
	@($(NODE_NPM_CI)) && touch $@ || echo "npm ci in examples/node failed (no npm, or offline): its tests are skipped"

$(WEB_STAMP): examples/web/package.json examples/web/package-lock.json
	@($(WEB_NPM_CI)) && touch $@ || echo "npm ci in examples/web failed (no npm, or offline): the page has no onnxruntime-web, its tests are skipped"

# The same installs, forced.
node-example:
	($(NODE_NPM_CI)) && touch $(NODE_STAMP)

web-example:
	($(WEB_NPM_CI)) && touch $(WEB_STAMP)

# Serve the page and the exported models (which `make repro` writes; this repository configures no DVC remote to
# pull them from), and nothing else of the repository: examples/web/serve.py answers only examples/web/, examples/common/ and models/onnx/, never
# .git/ or .dvc/.
# Only Python's standard library: no venv needed.
web: $(WEB_STAMP)
	$(PYTHON) examples/web/serve.py --root . --port $(WEB_PORT)

bench: setup
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/exporters.py

# Swap onnxruntime's CPU build for the GPU build (same Python package name, so one replaces the other),
# and back. The GPU build falls back to the CPU where no GPU or driver is found; its pin is GPU_BUILD in
# src/fmnist_seq/runtime.py, read before the CPU build is removed.
# Both builds write the same onnxruntime/ folder: remove both before installing one, or a leftover record
# of the other makes pip skip the install and leaves the package half deleted.
onnxruntime-gpu: setup
	@build="$$($(BIN)/python -c 'from fmnist_seq.runtime import GPU_BUILD; print(GPU_BUILD)')" && \
	  $(BIN)/python -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu && \
	  $(BIN)/python -m pip install --quiet "$$build"
	$(BIN)/python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"

onnxruntime-cpu: setup
	$(BIN)/python -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"

clean-venv:
	rm -rf $(VENV)
