# Two commands for a new user: `make demo` and `make test`. Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed on its own first so that you can choose the build: the default, torch==2.13.0, is a CUDA
# build from PyPI on a Linux GPU machine (and the CPU wheel where one is provided locally). For a CPU-only
# machine elsewhere: make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install install-dev demo test test-slow clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/bert train-vocab --config configs/train-vocab/demo.yaml --overwrite
	$(BIN)/bert tokenize --tokenizer runs/demo/tokenizer "The hacker ethic is a kludge of folklore."


test: install-dev
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: install-dev
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

clean-demo:
	rm -rf runs/demo
