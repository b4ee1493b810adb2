#!/usr/bin/env bash
# Issue 10's GPU checks, sized for one short device lease (each part has its own time limit):
#   tests   the CUDA tests of tests/gpu: bf16 autocast, SDPA's flash kernel (MHA and GQA), KV-cache
#           decode against re-running the whole sequence, compiled decode and compiled layers
#   decode  7B-shaped random weights, bf16, batch 1: prefill and decode, eager and compiled, each
#           decode row with its share of the bandwidth bound (weight and KV-cache bytes per step /
#           the read bandwidth measured in the same run, and / the datasheet's), against
#           transformers' generate. Eager decoding dispatches ~100 torch ops a layer (~25 kernels):
#           on a 7B model that may take longer on the CPU than the GPU's ~4 ms of weight reads,
#           which is what the compiled row is for.
#   train   ~1B config, bf16 autocast, flash attention, eager and compiled: tokens/s and MFU against
#           the bf16 matmul rate measured in the same run, against transformers
#   decode8 the decode benchmark at batch 8 (eager only)
#
#   benchmarks/gpu_check.sh [tests] [train] [decode] [decode8]
#   (no argument: tests train decode, ~680 s at their limits: more than one 600 s device call)
#
# Each part stops at its own limit (TESTS_LIMIT=150, TRAIN_LIMIT=200, DECODE_LIMIT=330,
# DECODE8_LIMIT=200 seconds); a benchmark stopped there still writes the rows it measured. With the
# device tool's 600 s a call and 15 minutes a session: one call `tests train`, one call `decode`.
# None of this has run on a GPU yet: the limits are estimates.
#
# Needs torch with CUDA, transformers and pytest importable by $PYTHON (default python3); runs from
# the source tree (PYTHONPATH=src), nothing to install. Writes into $OUT (default gpu_results/):
# tests.txt, RESULTS.md (the benchmark tables) and one JSON report per benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_results}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
py=${PYTHON:-python3}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests train decode)

"$py" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" \
  | tee "$out/environment.txt"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device: nothing to check"; exit 1; }

status=0
for part in "${parts[@]}"; do
  case $part in
    tests)
      timeout "${TESTS_LIMIT:-150}" "$py" -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$out/tests.txt" || status=1 ;;
    train)
      timeout "${TRAIN_LIMIT:-200}" "$py" -m llamaforge bench --device cuda --configs 1B --suites train \
        --precisions bf16 --compile --repeats 3 --out "$out/RESULTS.md" --json "$out/bench_1B.json" || status=1 ;;
    decode)
      timeout "${DECODE_LIMIT:-330}" "$py" -m llamaforge bench --device cuda --configs 7B --suites generate \
        --precisions bf16 --compile --batches 1 --repeats 3 --out "$out/RESULTS.md" --json "$out/bench_7B.json" || status=1 ;;
    decode8)
      timeout "${DECODE8_LIMIT:-200}" "$py" -m llamaforge bench --device cuda --configs 7B --suites generate \
        --precisions bf16 --batches 8 --repeats 3 --out "$out/RESULTS.md" --json "$out/bench_7B_b8.json" || status=1 ;;
    *)
      echo "unknown part '$part': choose from tests, train, decode, decode8"; exit 2 ;;
  esac
done
exit $status
