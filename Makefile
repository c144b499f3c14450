# Two commands: `make demo` and `make test`. Each sets up .venv first when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sagedrop demo

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint infra_templates/*.yaml

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/inference_latency.py
	$(BIN)/python bench/local_serving.py
	$(BIN)/python bench/debug_overhead.py
	$(BIN)/python bench/job_startup.py
	$(BIN)/python bench/hostile_images.py
	$(BIN)/python bench/evaluation_cost.py
	$(BIN)/python bench/data_audit.py
	$(BIN)/python bench/torchserve_load.py
	$(BIN)/python bench/tracking_cost.py

clean:
	rm -rf $(VENV) .sagedrop-demo .sagedrop .pytest_cache .ruff_cache chalice_app/vendor build
