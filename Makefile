# The two set-up commands are `make demo` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench big-model-check llm-bench corpus fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/optc compress sample_models/digits_cnn.onnx --recipe int8-dynamic \
		--data sample_models/digits_test.npz -o demo/digits_cnn.int8.onnx

test: lint
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check optc tests bench

# A long fuzz run (CI runs 40 seeded examples per target as part of `make test`).
fuzz: venv
	OPTC_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest tests/test_fuzz.py -q

bench: venv
	$(BIN)/python -m pip install --quiet -e '.[bench]' && $(BIN)/python bench/run.py

# A model over 2 GB through inspect and every built-in recipe that applies; writes its section of bench/RESULTS.md.
big-model-check: venv
	$(BIN)/python bench/run.py big_model

# A 1.1 B-parameter LLaMA-shaped decoder at 4 bits against ONNX Runtime's quantizer, and real encoders at 4 bits.
llm-bench: venv
	$(BIN)/python -m pip install --quiet -e '.[bench]' && $(BIN)/python bench/run.py llm

# Every built-in recipe over the real models of ../shared/corpus (fetched into bench/.cache/corpus on first use),
# with realistic data and without; not part of CI (it downloads, and takes hours). OPTC_CORPUS_RECIPES and
# OPTC_CORPUS_MODELS pick a subset.
corpus: venv
	$(BIN)/python -m pip install --quiet -e '.[bench]' && $(BIN)/python bench/run.py corpus

clean:
	rm -rf $(VENV) demo build .pytest_cache
