#!/usr/bin/env bash
# The benchmarks on CUDA in bf16 autocast, in one command (< 5 minutes on an H100/H200): op calls
# per step, static-cache compiled decoding, then blocks vs the baselines, generation, feature cache,
# memory + model FLOP utilisation of a training step at the biomed sizes. Prints one summary table; writes bench/gpu/RESULTS.md and
# bench/gpu/results.json. Extra arguments go to `python -m bench.run` (e.g. --train-batch 32).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
# BENCH_PYTHON: an interpreter that already has the locked packages (a lent GPU machine reaches no
# package index, so `make setup` cannot build .venv there: see bench/README.md for the wheels).
if [[ -n "${BENCH_PYTHON:-}" ]]; then
    PY=$BENCH_PYTHON
else
    make -s setup
    PY=.venv/bin/python
fi
# Baselines outside .venv, as `make bench` installs them (see the Makefile); a carried copy is used as is.
if ! ls bench/.baselines/.installed-* >/dev/null 2>&1; then
    make -s "bench/.baselines/.installed-$(sha256sum bench/requirements-baselines.txt | cut -c1-16)"
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
# Block steps are milliseconds: many repetitions for stable medians; decoding is seconds: fewer.
# --compile adds our blocks under torch.compile and compiles the training step (first step ~40 s).
# The last section repeats that step with the frozen LM and ViT in bfloat16 (FlamingoConfig.frozen_dtype);
# results are written after every section, so the time limit below costs only what was unfinished.
# First the two short ones: op calls per decoded token and training step (the host overhead), and
# static-cache decoding with the step compiled in mode reduce-overhead (one CUDA graph a step).
timeout 60 "$PY" -m bench.op_counts --device cuda --bf16 --out bench/gpu || echo "op counts: not finished"
timeout 60 "$PY" -m bench.static_decoding --device cuda --bf16 --out bench/gpu || echo "static decoding: not finished"
BENCH_COMMAND="bench/gpu.sh $*" exec timeout 175 "$PY" -m bench.run --device cuda --bf16 --compile \
    --block-reps 20 --reps 5 --out bench/gpu "$@"
