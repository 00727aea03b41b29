# evoprune: `make prune` sets everything up and runs the default pipeline; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export KEDRO_DISABLE_TELEMETRY := 1
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup dataset prune prune-tiny test lint viz mlflow-ui bench notebook clean-data

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# Fashion-MNIST from Debian's package (offline-friendly). Elsewhere: set dataset.source_dir or
# dataset.download in conf/local/globals.yml.
dataset:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(FASHION_MNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Could not install Debian's dataset-fashion-mnist; point dataset.source_dir in conf/local/globals.yml at the IDX files, or set dataset.download: true"; \
	fi

prune: setup dataset
	$(BIN)/kedro run --pipeline=prune

prune-tiny: setup dataset
	$(BIN)/kedro run --pipeline=prune --env=tiny

test: setup
	$(BIN)/python -m pytest -n auto   # one worker per core (pytest-xdist), one torch thread each

lint: setup
	$(BIN)/ruff check src tests benchmarks

viz: setup
	$(BIN)/kedro viz build

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean-data:
	find data -type f ! -name .gitkeep -delete

bench: setup
	$(BIN)/python benchmarks/mask_evaluation.py
	@if [ -f data/06_models/finetuned/keep_members.pt ]; then $(BIN)/python benchmarks/pruned_latency.py && \
		$(BIN)/python benchmarks/latency_model.py; \
	else echo "pruned_latency.py: run 'make prune' first (it times the fine-tuned members)"; fi

notebook: setup
	$(BIN)/python -m pip install --quiet -e ".[notebook]"
	$(BIN)/jupyter lab notebooks/explore_prune_run.ipynb
