"""
One-GPU throughput of the trainer at the d12 MoE leg config of the user's nanochat fork
(xiaobo-yang/nanochat, MoE branch), beside the fork's per-GPU figures, measured through
`python -m nanochat.base_train` itself (each leg its own process, cold compile included),
synthetic data at the fork tokenizer's vocab, 32,768:

    depth 12, aspect 64, head dim 64, seq 1024, device batch 16, 8 experts top-2, expert hidden 2x,
    moe-freq 1, balance coeff 0.01; total batch 65,536 tokens = 4 micro-steps, as one of the fork's
    8 GPUs did per step (524,288 tokens over 8 GPUs); eval, sampling and checkpoints off.

    PYTHONPATH=. python -m bench.gpu                 # the two legs with a fork figure (~3 min on an H100/H200)
    PYTHONPATH=. python -m bench.gpu --legs all      # + bf16 cap 1.0 and dense
    python -m bench.gpu --cpu-check                  # tiny model on CPU: checks this script, not figures

The fork's figures are tail-50 means of its 8-GPU logs divided by 8 (its capacity ablation and
compile sweep, 2026-02-24): FP8 incl. experts, fixed capacity 1.0, static compile:
785,203 tok/s = 98,150 per GPU; bf16, dropless, static: 1,080,430 tok/s = 135,054 per GPU.
MFU is given for both at the same peak (this GPU's bf16 dense peak) and the same FLOPs per token
(the trainer's estimate for this config), so the MFU ratio is the tok/sec ratio. (The fork's own
logs used an H800 peak, 756e12; its count, 7.32e8 FLOPs per token with its SSSL sliding windows,
is the trainer's too.) A leg is measured over its steps after the first 10.
Static legs must compile to one graph (a graph break shows as more) and report 0 recompiles after
the first step; with the dense and bf16 cap 1.0 legs both run, the MoE's cost over dense is given
as the ratio of their step times. The last line says whether every leg passed.
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

ROOT = Path(__file__).resolve().parents[1]

STEP_RE = re.compile(r"^step (\d+)/\d+ .*\| tok/sec: ([\d,]+) \| bf16_mfu: ([\d.]+)")
PEAK_MEM_RE = re.compile(r"^Peak memory usage: ([\d.]+)MiB")
FLOPS_RE = re.compile(r"^Estimated FLOPs per token: ([\d.e+]+)")
RECOMPILE_RE = re.compile(
    r"^torch\.compile: (\d+) graph\(s\) in the first step, (\d+) recompile\(s\) after it"
)

D12 = [
    "--depth", "12", "--aspect-ratio", "64", "--head-dim", "64", "--max-seq-len", "1024",
    "--device-batch-size", "16", "--n-experts", "8", "--expert-topk", "2", "--moe-freq", "1",
    "--expert-hidden-mult", "2", "--balance-loss-coeff", "0.01", "--vocab-size", "32768",
    "--eval-every", "-1", "--core-metric-every", "-1", "--sample-every", "-1", "--save-every", "0",
]  # fmt: skip
CPU_CHECK = {"--depth": "2", "--max-seq-len": "128", "--device-batch-size": "4", "--vocab-size": "512"}

MOE_CAP = ["--use-moe", "--moe-capacity-factor", "1.0", "--compile-mode", "static"]
MOE_DROPLESS = ["--use-moe", "--moe-capacity-factor", "0.0", "--compile-mode", "static"]
FP8_ALL = ["--fp8", "--fp8-include-moe-experts"]

# name -> (trainer args, the fork's tok/sec per GPU for the same config or None, description)
LEGS: dict[str, tuple[list[str], float | None, str]] = {
    "fp8_cap1p0_static": ([*MOE_CAP, *FP8_ALL], 785_203.42 / 8, "MoE FP8 incl. experts, cap 1.0, static"),
    "bf16_dropless_static": (MOE_DROPLESS, 1_080_430 / 8, "MoE bf16, dropless, static"),
    "bf16_cap1p0_static": (MOE_CAP, None, "MoE bf16, cap 1.0, static"),
    "dense_static": (["--compile-mode", "static"], None, "dense, 4x MLP (same active FLOPs), static"),
}
DEFAULT_LEGS = "fp8_cap1p0_static,bf16_dropless_static"


def run_leg(name: str, args, ckpt_root: str, base: list[str], device: str) -> dict:
    extra = LEGS[name][0]
    if device == "cpu":
        extra = [v if extra[i - 1] != "--compile-mode" else "none" for i, v in enumerate(extra)]
    cmd = [
        sys.executable, "-m", "nanochat.base_train", *base, *extra, "--device-type", device,
        "--num-iterations", str(args.steps), "--total-batch-size", str(args.total_batch_size),
        "--checkpoint-root", ckpt_root, "--model-tag", name, "--moe-log-every", "10",
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.leg_timeout)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = "timeout"
    lines = out.splitlines()
    steps = [(int(m.group(1)), int(m.group(2).replace(",", "")), float(m.group(3)))
             for m in (STEP_RE.match(line) for line in lines) if m]  # fmt: skip
    tail = [s for s in steps if s[0] > 10] or steps

    def first(regex, default=None):
        return next((m for m in (regex.match(line) for line in lines) if m), default)

    peak, flops, recompile = first(PEAK_MEM_RE), first(FLOPS_RE), first(RECOMPILE_RE)
    return {
        "rc": rc,
        "wall_s": time.time() - t0,
        "steps": len(steps),
        "tok_per_sec": statistics.mean(s[1] for s in tail) if tail else float("nan"),
        "mfu": statistics.mean(s[2] for s in tail) if tail else float("nan"),
        "peak_mib": float(peak.group(1)) if peak else float("nan"),
        "flops_per_token": float(flops.group(1)) if flops else float("nan"),
        "graphs": int(recompile.group(1)) if recompile else None,
        "recompiles": int(recompile.group(2)) if recompile else None,
        "notes": [
            line
            for line in lines
            if line.startswith(
                ("torch.compile", "MoE", "FP8", "✓ FP8", "GPU:", "Optimizer:", "Vocab size", "moe step 00020")
            )
        ],  # fmt: skip
        "error": lines[-60:] if rc != 0 else [],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench.gpu", description="one-GPU d12 throughput beside the fork's figures"
    )
    ap.add_argument(
        "--steps", type=int, default=22, help="optimizer steps per leg (the first 10 are not measured)"
    )
    ap.add_argument(
        "--total-batch-size", type=int, default=65536, help="tokens per step (4 micro-steps of 16 x 1024)"
    )
    ap.add_argument(
        "--legs", default=DEFAULT_LEGS, help=f"comma-separated subset of {','.join(LEGS)}, or all"
    )
    ap.add_argument("--leg-timeout", type=int, default=150, help="seconds per leg, compile included")
    ap.add_argument("--cpu-check", action="store_true", help="tiny model on CPU: checks this script only")
    args = ap.parse_args(argv)
    legs = list(LEGS) if args.legs == "all" else args.legs.split(",")
    unknown = [name for name in legs if name not in LEGS]
    if unknown:
        ap.error(f"unknown leg(s) {','.join(unknown)}; choose from {','.join(LEGS)} or all")

    import torch  # only to name the device and its peak

    from nanochat.common import peak_flops_for

    base = list(D12)
    if args.cpu_check:  # the pipeline, not the figures: depth 2, seq 128, eager, on CPU
        for flag, value in CPU_CHECK.items():
            base[base.index(flag) + 1] = value
        args.total_batch_size, args.steps, device = 1024, min(args.steps, 14), "cpu"
        gpu_name, peak = "cpu (--cpu-check: the figures mean nothing)", 0.0
    elif not torch.cuda.is_available():
        print(
            "bench.gpu: no CUDA device here; this script needs one NVIDIA GPU (or --cpu-check)",
            file=sys.stderr,
        )
        return 2
    else:
        device, gpu_name = "cuda", torch.cuda.get_device_name(0)
        peak = peak_flops_for(gpu_name)
    print(
        f"device: {gpu_name} | bf16 peak {peak:.3e} | torch {torch.__version__} | python {sys.version.split()[0]}"
    )
    print(f"config: d12 MoE 8x top-2, seq 1024, device batch 16, vocab 32,768 (synthetic), total batch "
          f"{args.total_batch_size:,} tokens, {args.steps} steps per leg, means over steps > 10")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as ckpt_root:
        for name in legs:
            r = run_leg(name, args, ckpt_root, base, device)
            results[name] = r
            status = "ok" if r["rc"] == 0 else f"FAILED rc={r['rc']}"
            print(
                f"  {name} ({LEGS[name][2]}): {status}, {r['steps']} steps in {r['wall_s']:.0f}s", flush=True
            )
            for line in r["notes"] + [f"| {e}" for e in r["error"]]:
                print(f"    {line}")

    print()
    print(
        "| leg | tok/sec/GPU | bf16_mfu % | peak mem (MiB) | fork tok/sec/GPU | fork mfu % (same peak) | ours / fork |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios = []
    for name, r in results.items():
        fork = LEGS[name][1]
        mfu = 100 * r["flops_per_token"] * r["tok_per_sec"] / peak if peak else r["mfu"]
        fork_cols = "- | - | -"
        if fork:
            fork_mfu = 100 * r["flops_per_token"] * fork / peak if peak else 0.0
            ratio = r["tok_per_sec"] / fork
            ratios.append(f"{name} {ratio:.2f}x")
            fork_cols = f"{fork:,.0f} | {fork_mfu:.2f} | {ratio:.2f}x"
        print(f"| {name} | {r['tok_per_sec']:,.0f} | {mfu:.2f} | {r['peak_mib']:.0f} | {fork_cols} |")
    lines, ok = verdict(results, ratios, compiled=device == "cuda")
    print("\n".join(lines))
    return 0 if ok else 1


def verdict(results: dict[str, dict], ratios: list[str], compiled: bool) -> tuple[list[str], bool]:
    """The closing lines, and whether every leg ran, and every static leg (when compiled) made one
    graph in its first step and recompiled nothing after it."""
    static = {n: r for n, r in results.items() if "--compile-mode" in LEGS[n][0] and compiled}
    bad = [n for n, r in static.items() if r["recompiles"] != 0]
    broken = [
        f"{n} ({r['graphs']} graphs)"
        for n, r in static.items()
        if r["graphs"] is not None and r["graphs"] != 1
    ]
    failed = [n for n, r in results.items() if r["rc"] != 0]
    lines = [
        "graphs in the first step / recompiles after it: "
        + (", ".join(f"{n} {r['graphs']}/{r['recompiles']}" for n, r in static.items()) or "not compiled")
    ]
    if "dense_static" in results and "bf16_cap1p0_static" in results:
        dense, cap = results["dense_static"]["tok_per_sec"], results["bf16_cap1p0_static"]["tok_per_sec"]
        lines.append(f"MoE bf16 cap 1.0 / dense step time, same active FLOPs: {dense / cap:.2f}")
    lines.append(f"RESULT: ours/fork tok/sec per GPU: {'; '.join(ratios) or '-'}"
                 f"{' | FAILED: ' + ','.join(failed) if failed else ''}{' | RECOMPILED: ' + ','.join(bad) if bad else ''}"
                 f"{' | GRAPH BREAKS: ' + ', '.join(broken) if broken else ''}")  # fmt: skip
    return lines, not (failed or bad or broken)


if __name__ == "__main__":
    sys.exit(main())
