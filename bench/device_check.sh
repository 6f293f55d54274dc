#!/usr/bin/env bash
# Every check of the trainer that needs a GPU, and the two GPU benchmarks, as ONE script for a
# borrowed machine with one NVIDIA GPU (Python 3.12 + torch 2.11, nothing else: synthetic data,
# vocab 32768). Prints everything; about 5-6 minutes on one H100/H200. Run from the source tree:
#
#     bash bench/device_check.sh          # on the GPU machine
#     bash bench/device_check.sh --cpu    # here, without a GPU: the same steps in their CPU forms
#                                         # (checks the script and the code paths, not the figures)
#
# Steps, each under its own time limit (a step that hangs cannot eat the next one's time):
#   1. bench.cuda_checks  grouped_mm, dropless == capacity, no host sync, static compile without
#                         recompiles, Muon in bf16, FP8 _scaled_mm / _scaled_grouped_mm path + numerics
#   2. bench.fp8_paths    each FP8 matmul path (per-expert, grouped, linear) eager and compiled, timed
#   3. bench.gpu          the trainer's d12 legs (FP8 cap 1.0 static, bf16 dropless static) beside
#                         the fork's per-GPU tok/sec; each static leg must report 0 recompiles
#   4. bench.fp8_gpu      d12 bf16 vs FP8 vs FP8+experts tok/sec (per-block compile), within a budget
#                         (its path and numerics checks already ran in step 1)
# The last lines give each step's exit code and time.
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
CPU=0
[ "${1:-}" = "--cpu" ] && CPU=1

SUMMARY=()
step() {  # step NAME LIMIT_S ARGS...
    local name=$1 limit=$2 start rc
    shift 2
    echo
    echo "=== $name: $PY $*"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$PY" "$@"
    rc=$?
    [ $rc -eq 124 ] && echo "=== $name: TIMED OUT after ${limit}s"
    SUMMARY+=("$name: rc=$rc in $(( $(date +%s) - start ))s")
}

T0=$(date +%s)
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))' \
    || { echo "device_check: $PY cannot import torch (set PYTHON=/path/to/python)"; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv,noheader

if [ $CPU -eq 0 ]; then
    step "cuda_checks" 150 -m bench.cuda_checks
    step "bench.fp8_paths" 90 -m bench.fp8_paths
    step "bench.gpu" 270 -m bench.gpu --leg-timeout 125
    step "bench.fp8_gpu" 130 -m bench.fp8_gpu --no-checks --depths 12 --warmup 3 --steps 10 --budget-s 110
else
    step "cuda_checks" 150 -m bench.cuda_checks --device cpu
    step "bench.gpu" 270 -m bench.gpu --cpu-check --steps 6
    step "bench.fp8_gpu" 130 -m bench.fp8_gpu --no-checks --device cpu --depths 2 --seq 128 --vocab 512 --batch 2 --steps 2 --warmup 1 --compile none
fi

echo
echo "=== device_check summary ($(( $(date +%s) - T0 ))s)"
printf '  %s\n' "${SUMMARY[@]}"
