"""
One-GPU throughput check of the trainer at the seed's d12 leg config (depth 12, aspect 64, head 64,
seq 1024, device batch 16, 8 experts top-2, expert hidden 2x), a few dozen steps with a smaller
total batch, for three legs side by side in one run:

    dense               the same model with a 4x ReLU^2 MLP (the same active FLOPs as top-2 of 8
                        experts with 2x hidden)
    moe_dropless        --moe-capacity-factor 0.0, --compile-mode static (the seed's baseline leg;
                        grouped_mm keeps every shape static, so it compiles like the others)
    moe_cap1p0_static   --moe-capacity-factor 1.0, --compile-mode static

    PYTHONPATH=. python -m nanochat.bench_gpu                  # about 5 minutes on one H100
    PYTHONPATH=. python -m nanochat.bench_gpu --fp8            # the same legs with --fp8

Each leg runs `python -m nanochat.base_train` as its own process (a fresh compile cache) and is
measured over its step lines after the first 10 steps (compilation). Targets: MoE cap 1.0 static at
0.75x dense tok/sec or more; per-GPU tok/sec at least 3x the seed's best (806,400 tok/s over 8 GPUs
= 100,800 per GPU at 9.76% MFU, FP8 incl. experts, static cap 1.0).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED_TOK_PER_SEC_PER_GPU = 806_400 / 8

STEP_RE = re.compile(r"^step (\d+)/\d+ .*\| tok/sec: ([\d,]+) \| bf16_mfu: ([\d.]+)")
PEAK_RE = re.compile(r"^Peak memory usage: ([\d.]+)MiB")

D12 = [
    "--depth", "12", "--aspect-ratio", "64", "--head-dim", "64", "--max-seq-len", "1024",
    "--device-batch-size", "16", "--n-experts", "8", "--expert-topk", "2", "--moe-freq", "1",
    "--expert-hidden-mult", "2", "--balance-loss-coeff", "0.01",
    "--eval-every", "-1", "--core-metric-every", "-1", "--sample-every", "-1",
]  # fmt: skip

DEVICE = ["cuda"]

LEGS = {
    "dense": ["--compile-mode", "static"],
    "moe_dropless": ["--use-moe", "--moe-capacity-factor", "0.0", "--compile-mode", "static"],
    "moe_cap1p0_static": ["--use-moe", "--moe-capacity-factor", "1.0", "--compile-mode", "static"],
}


def run_leg(name: str, extra: list[str], args, ckpt_root: str) -> dict:
    cmd = [
        sys.executable, "-m", "nanochat.base_train", *D12, *extra,
        "--device-type", DEVICE[0], "--num-iterations", str(args.steps),
        "--total-batch-size", str(args.total_batch_size), "--save-every", "0",
        "--checkpoint-root", ckpt_root, "--model-tag", name, "--moe-log-every", "10",
    ]  # fmt: skip
    if args.fp8:
        cmd += ["--fp8"] + (["--fp8-include-moe-experts"] if "--use-moe" in extra else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.leg_timeout)
    wall = time.time() - t0
    lines = p.stdout.splitlines()
    steps = [(int(m.group(1)), int(m.group(2).replace(",", "")), float(m.group(3)))
             for m in (STEP_RE.match(line) for line in lines) if m]  # fmt: skip
    tail = [s for s in steps if s[0] > 10] or steps
    peak = next((float(m.group(1)) for m in (PEAK_RE.match(line) for line in lines) if m), float("nan"))
    res = {
        "name": name,
        "rc": p.returncode,
        "wall_s": wall,
        "steps": len(steps),
        "tok_per_sec": statistics.mean(s[1] for s in tail) if tail else float("nan"),
        "mfu": statistics.mean(s[2] for s in tail) if tail else float("nan"),
        "peak_mib": peak,
        "moe_lines": [line for line in lines if line.startswith("moe step")][-1:],
        "header": [line for line in lines[:12] if not line.startswith("step")],
    }
    if p.returncode != 0:
        res["error"] = (p.stdout + p.stderr).strip().splitlines()[-15:]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench_gpu", description="one-GPU d12 throughput: dense vs MoE")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--total-batch-size", type=int, default=32768, help="tokens per step (2 micro-steps)")
    ap.add_argument("--fp8", action="store_true", help="run the legs with --fp8 (experts too for MoE)")
    ap.add_argument("--legs", default=",".join(LEGS), help="comma-separated subset of " + ",".join(LEGS))
    ap.add_argument("--leg-timeout", type=int, default=190, help="seconds per leg (3 legs < 10 min)")
    ap.add_argument("--cpu-check", action="store_true", help="tiny model on CPU: checks this script only")
    args = ap.parse_args()

    unknown = [name for name in args.legs.split(",") if name not in LEGS]
    if unknown:
        ap.error(f"unknown leg(s) {','.join(unknown)}; choose from {','.join(LEGS)}")

    import torch  # only to name the device

    if args.cpu_check:  # the pipeline, not the figures: depth 2, seq 128, eager, on CPU
        global D12
        D12 = [a for a in D12]
        for flag, value in (("--depth", "2"), ("--max-seq-len", "128"), ("--device-batch-size", "4")):
            D12[D12.index(flag) + 1] = value
        D12 += ["--vocab-size", "512"]
        for leg in LEGS.values():
            leg[leg.index("--compile-mode") + 1] = "none"
        args.total_batch_size = 1024
        args.steps = min(args.steps, 14)
        DEVICE[0] = "cpu"
    elif not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; this script needs one NVIDIA GPU", file=sys.stderr)
        sys.exit(2)
    name = "cpu (--cpu-check: figures mean nothing)" if args.cpu_check else torch.cuda.get_device_name(0)
    print(f"device: {name} | torch {torch.__version__} | python {sys.version.split()[0]}")
    print(f"config: d12 (768 wide, 12 heads), seq 1024, device batch 16, total batch {args.total_batch_size:,} "
          f"tokens, {args.steps} steps, fp8={'on' if args.fp8 else 'off'}; means over steps > 10")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as ckpt_root:
        for name in args.legs.split(","):
            res = run_leg(name, LEGS[name], args, ckpt_root)
            results[name] = res
            status = "ok" if res["rc"] == 0 else f"FAILED rc={res['rc']}"
            print(f"  {name}: {status}, {res['steps']} steps in {res['wall_s']:.0f}s", flush=True)
            for line in res["header"]:
                if line.startswith(("torch.compile", "Estimated FLOPs", "MoE", "✓ FP8", "FP8")):
                    print(f"    {line}")
            for line in res["moe_lines"]:
                print(f"    {line}")
            for line in res.get("error", []):
                print(f"    | {line}")
    print()
    print("| leg | tok/sec | bf16_mfu | peak mem (MiB) | vs dense | vs seed per GPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    dense = results.get("dense", {}).get("tok_per_sec")
    for name, r in results.items():
        vs_dense = f"{r['tok_per_sec'] / dense:.2f}x" if dense else "-"
        vs_seed = r["tok_per_sec"] / SEED_TOK_PER_SEC_PER_GPU
        print(f"| {name} | {r['tok_per_sec']:,.0f} | {r['mfu']:.2f} | {r['peak_mib']:.0f} | {vs_dense} | {vs_seed:.2f}x |")
    cap = results.get("moe_cap1p0_static")
    if cap and dense:
        print(f"target MoE cap1.0 static / dense tok/sec >= 0.75: {cap['tok_per_sec'] / dense:.2f}")
    if cap:
        print(f"target per-GPU tok/sec >= 3x seed ({3 * SEED_TOK_PER_SEC_PER_GPU:,.0f}): "
              f"{cap['tok_per_sec']:,.0f} ({cap['tok_per_sec'] / SEED_TOK_PER_SEC_PER_GPU:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
