# Two commands for a new user: `make demo` and `make test`. Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed on its own first so that you can choose the build: the default, torch==2.13.0, is a CUDA
# build from PyPI on a Linux GPU machine (and the CPU wheel where one is provided locally). For a CPU-only
# machine elsewhere: make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install install-dev demo lint test test-slow gpu-check clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	@touch $@

# The demo draws its metrics.png with matplotlib (the `plot` extra).
$(VENV)/.installed-demo: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[plot]"
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The whole pipeline on the bundled sample (configs/pipeline/demo.yaml: about 7 minutes on 2 CPU cores; a rerun
# skips every stage that is up to date, --overwrite rebuilds a stale one), its model's accuracy on the 98 Jargon
# File entries it never trained on (data/sample/jargon-heldout.txt, in pairs of the demo's length, 64), then
# questions to it: two NSP pairs, gaps in phrases the Jargon File uses often, and BLiMP-style minimal pairs
# (data/sample/minimal-pairs.jsonl).
DEMO_MODEL := runs/demo/pretrain
DEMO_HELDOUT := data/sample/jargon-heldout.txt
DEMO_LENGTH := 64
DEMO_FIRST := Hacker folklore has been shaped primarily by the Unix, ITS, TOPS-10, TOPS-20/TWENEX, WAITS, CP/M, MS-DOS, and Multics operating systems (most importantly by ITS and Unix).
DEMO_PAIRS := data/sample/minimal-pairs.jsonl
# Torch threads of the demo's run. Empty: the pretrain key num_threads: auto, which uses every core when they are
# idle and only the idle ones when other jobs keep them busy (one thread instead of two fighting for 2 busy cores
# trained 3-4x faster: docs/benchmarks.md, "The demo"); `make demo DEMO_THREADS=1` forces one.
DEMO_THREADS ?=
DEMO_ENV := $(if $(DEMO_THREADS),OMP_NUM_THREADS=$(DEMO_THREADS),)
demo: $(VENV)/.installed-demo
	$(DEMO_ENV) $(BIN)/bert run configs/pipeline/demo.yaml --overwrite
	@echo; echo "== bert evaluate: MLM and NSP accuracy on entries the model never saw ($(DEMO_HELDOUT), 15% masked)"
	$(BIN)/bert pairs --input $(DEMO_HELDOUT) --tokenizer runs/demo/tokenizer --output runs/demo/heldout-pairs \
		--overwrite --set max_seq_length=$(DEMO_LENGTH) --set dupe_factor=3
	$(BIN)/bert evaluate --model $(DEMO_MODEL) --data runs/demo/heldout-pairs
	@echo; echo "== bert predict-nsp: does the second sentence follow the first? (the real next sentence, then a random one)"
	$(BIN)/bert predict-nsp --model $(DEMO_MODEL) --first "$(DEMO_FIRST)" --second "See also timesharing."
	$(BIN)/bert predict-nsp --model $(DEMO_MODEL) --first "$(DEMO_FIRST)" --second "2. Badly written, possibly buggy code."
	@echo; echo "== bert fill-mask: which words fit the gap?"
	$(BIN)/bert fill-mask --model $(DEMO_MODEL) --top-k 3 "See [MASK] hack."
	$(BIN)/bert fill-mask --model $(DEMO_MODEL) --top-k 3 "This is one of [MASK] most famous hacks."
	$(BIN)/bert fill-mask --model $(DEMO_MODEL) --top-k 3 "See [MASK], sense 2."
	@echo; echo "== bert score: does the model give the grammatical sentence of each minimal pair the higher score?"
	$(BIN)/bert score --model $(DEMO_MODEL) --pairs $(DEMO_PAIRS)
	@echo; echo "Fine-tune it on your labelled text: bert finetune --model $(DEMO_MODEL) --train train.tsv --output runs/demo/classifier (docs/finetuning.md)"
	@echo "Next: docs/quickstart.md (evaluate, embed, attention, your own corpus)."

lint: install-dev
	$(BIN)/ruff check bertcli tests scripts

test: install-dev
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: install-dev
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

# On a GPU machine, first: host syncs, sequences/s, MFU and peak memory of BERT-base (bf16, eager and compiled) and an
# fp16 kill-and-resume, in under 10 minutes on one GPU (docs/pretraining.md, "The GPU check"). DEVICE=cpu: on CPU.
gpu-check: install
	PYTHON=$(BIN)/python scripts/gpu_check.sh

clean-demo:
	rm -rf runs/demo
