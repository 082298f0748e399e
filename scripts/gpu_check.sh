#!/usr/bin/env bash
# The GPU check: on one GPU, in under 10 minutes from a fresh clone with the project installed (`make install`),
#   scripts/gpu_check.sh                  (or: make gpu-check)
# builds data from the bundled sample (data/sample/jargon.txt → tokenizer → pairs at length 128 → masked), then
# scripts/gpu_check.py prints the device and the precision `auto` picks there, the host syncs per training step,
# sequences/s, model TFLOP/s, MFU and peak memory of BERT-base at length 128 in bf16, eager and compiled, and an
# fp16 run killed with SIGKILL and resumed, then `bert finetune` under precision auto. Its JSON (also in $WORK/report.json) is what docs/benchmarks.md records
# for a GPU. DEVICE=cpu runs the same end to end on CPU with BERT-tiny (tests/test_gpu_check.py does).
#   DEVICE=cuda|cpu   PYTHON=path/to/python   WORK=runs/gpu-check   STEPS=60
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-runs/gpu-check}
STEPS=${STEPS:-0}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
bert() { "$PYTHON" -m bertcli "$@"; }
start=$(date +%s)
mkdir -p "$WORK"
echo "gpu_check: data from data/sample/jargon.txt into $WORK" >&2
bert train-vocab --input data/sample/jargon.txt --output "$WORK/tokenizer" --overwrite --set vocab_size=30522 >&2
bert pairs --input data/sample/jargon.txt --tokenizer "$WORK/tokenizer" --output "$WORK/pairs" --overwrite \
    --set max_seq_length=128 --set dupe_factor=2 >&2
bert mask --input "$WORK/pairs" --output "$WORK/masked" --overwrite >&2
"$PYTHON" scripts/gpu_check.py --device "$DEVICE" --data "$WORK/masked" --work "$WORK" --steps "$STEPS" \
    > "$WORK/report.json"
cat "$WORK/report.json"
echo "gpu_check: done in $(( $(date +%s) - start )) s; report in $WORK/report.json" >&2
