# Each target bootstraps .venv itself: on a fresh machine with only python3,
# `make demo` and `make test` are all a user needs.
PYTHON ?= python3
VENV ?= .venv
# Override to pick another torch build, e.g. make test TORCH_SPEC='torch==2.4.1'.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format clean bench deploy

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	# Pin torch to the build just installed so no dependency can pull a different (CUDA) build.
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[dev]"
	touch $(STAMP)

# The deploy extra (monai-deploy-app-sdk, Holoscan; ~5 s, ~420 MB) for tests/test_deploy_app.py.
DEPLOY_STAMP := $(VENV)/.installed-deploy
$(DEPLOY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[dev,deploy]"
	touch $(DEPLOY_STAMP)

deploy: $(DEPLOY_STAMP)

demo: $(STAMP)
	$(BIN)/unet-monai demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Benchmarks against in-run baselines (bench/run_all.py --quick): bench/results/latest.json, see BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/check_json.py

# The Docker images without a Docker engine (docker/check.sh): hadolint, the install script run
# outside Docker into a fresh venv, the image's entry points (train, monai.bundle run); ~1.5 min.
.PHONY: docker-check
docker-check: $(STAMP)
	PYTHON=$(BIN)/python bash docker/check.sh

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/python tools/check_json.py --fix

clean:
	rm -rf $(VENV) demo_output .pytest_cache
