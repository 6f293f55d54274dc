#!/usr/bin/env bash
# Every check of the trainer that needs a GPU, and the GPU benchmarks, as ONE script for a borrowed
# machine with one NVIDIA GPU (Python 3.12 + torch 2.11, nothing else: synthetic data, vocab
# 32768). About 6 minutes on one H100/H200. Run from the source tree:
#
#     bash bench/device_check.sh          # on the GPU machine
#     bash bench/device_check.sh --cpu    # here, without a GPU: the same steps in their CPU forms
#                                         # (checks the script and the code paths, not the figures)
#
# Steps, each under its own time limit (a step that hangs cannot eat the next one's time):
#   1. bench.cuda_checks  grouped_mm runs; dropless == capacity; torch._grouped_mm's own host
#                         sync, then none in the MoE forward+backward (bf16 autocast, every grouped
#                         matmul in bf16); one graph and no recompile for the MoE blocks and the
#                         trainer's GPT (dropless, cap 1.0); Muon in bf16; FP8 kernels + numerics
#   2. bench.moe          one d12 FFN block (16384 tokens, dim 768): cap 1.0 and dropless against
#                         dense, eager and compiled, median and best; a per-kernel GPU profile
#   3. bench.gpu          the trainer's d12 legs: FP8 cap 1.0 (compiled FP8 experts) and bf16
#                         dropless beside the fork's per-GPU tok/sec, bf16 cap 1.0 and dense for
#                         the whole model's MoE/dense ratio; every static leg must compile to one
#                         graph with 0 recompiles
# The last lines repeat each step's verdict lines, then its exit code and time.
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # output through the pipe to tee as it comes, and none lost to a timeout
PY="${PYTHON:-$(command -v python3 || command -v python)}"
CPU=0
[ "${1:-}" = "--cpu" ] && CPU=1
LOG=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX") || exit 2

SUMMARY=()
STEPS=()
step() {  # step NAME LIMIT_S ARGS...
    local name=$1 limit=$2 start rc
    shift 2
    echo
    echo "=== $name: $PY $*"
    start=$(date +%s)
    STEPS+=("$name")
    timeout --kill-after=10 "$limit" "$PY" "$@" 2>&1 | tee "$LOG/$name.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "=== $name: TIMED OUT after ${limit}s"
    SUMMARY+=("$name: rc=$rc in $(( $(date +%s) - start ))s")
}

T0=$(date +%s)
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))' \
    || { echo "device_check: $PY cannot import torch (set PYTHON=/path/to/python)"; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv,noheader

if [ $CPU -eq 0 ]; then
    step "cuda_checks" 150 -m bench.cuda_checks
    step "bench.moe" 150 -m bench.moe --device cuda --tokens 16384 --dim 768 --kinds dense,cap1.0,dropless \
        --rounds 15 --warmup 3 --profile
    step "bench.gpu" 330 -m bench.gpu --legs all --leg-timeout 110
else
    step "cuda_checks" 120 -m bench.cuda_checks --device cpu
    step "bench.moe" 150 -m bench.moe --tokens 512 --dim 64 --kinds dense,cap1.0,dropless --rounds 3 --warmup 1 \
        --profile
    step "bench.gpu" 330 -m bench.gpu --cpu-check --steps 6 --legs all
fi

echo
echo "=== device_check summary ($(( $(date +%s) - T0 ))s)"
for name in "${STEPS[@]}"; do
    grep -hE '^\[(PASS|FAIL|SKIP)\]|^CUDA checks:|^cap1\.0/dense fwd\+bwd|^profile |^graphs in the first step|^MoE bf16 cap|^RESULT:' \
        "$LOG/$name.log" | cut -c1-400
done
printf '  %s\n' "${SUMMARY[@]}"
rm -rf "$LOG"
