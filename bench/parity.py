"""
Trainer parity with the user's fork (xiaobo-yang/nanochat, branch yxb/moe-add-sft-claude): the
capacity ablation on the smoke corpus must reach the fork's conclusion. Trains dense, MoE
dropless and MoE at capacity 1.0, one after another, each a single CPU process of
`python -m nanochat.base_train` on the same config (depth 4, seq 256, total batch 2048 tokens,
200 steps, the smoke corpus and its 1024-token BPE, validation every 50 steps), and prints the
validation bpb at each eval beside the fork's for the same config, then the ratios that matter:

    python -m bench.parity                       # the corpus in a temp dir, made first (seconds)
    python -m bench.parity --data DIR            # an existing `python -m nanochat.smoke_data --out DIR`

The fork's figures (FORK below, also in README.md) are from one run of the fork's own
scripts/base_train.py per variant, single process on CPU, with the same flags and its defaults
otherwise (window pattern SSSL, compile mode auto), NANOCHAT_BASE_DIR pointing at the same smoke
corpus. The last line says where this trainer lands: each final bpb against the fork's (target:
within 1%), and the dropless -> cap1.0 and dense -> cap1.0 changes in final bpb against the
fork's (target: within 0.5 points).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAL_RE = re.compile(r"^Step (\d+) \| Validation bpb: ([\d.]+)$", re.M)

CONFIG = [
    "--device-type", "cpu", "--depth", "4", "--max-seq-len", "256", "--device-batch-size", "8",
    "--total-batch-size", "2048", "--eval-tokens", "32768", "--save-every", "0",
]  # fmt: skip
MOE = ["--use-moe", "--n-experts", "8", "--expert-topk", "2", "--moe-freq", "1", "--expert-hidden-mult", "2",
       "--balance-loss-coeff", "0.01"]  # fmt: skip
VARIANTS = {
    "dense": [],
    "dropless": [*MOE, "--moe-capacity-factor", "0.0"],
    "cap1.0": [*MOE, "--moe-capacity-factor", "1.0"],
}

# Validation bpb of the fork's runs of this config (200 steps, eval every 50), by step.
FORK = {
    "dense": {0: 3.992637, 50: 3.133293, 100: 2.749039, 150: 2.566549, 200: 2.499195},
    "dropless": {0: 3.992637, 50: 3.134230, 100: 2.747031, 150: 2.567813, 200: 2.499765},
    "cap1.0": {0: 3.992637, 50: 3.138416, 100: 2.750921, 150: 2.571501, 200: 2.505855},
}
FORK_STEPS, FORK_EVERY = 200, 50


def make_corpus(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "nanochat.smoke_data", "--out", str(out)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def train(variant: str, data: Path, steps: int, every: int, extra: list[str], ckpt: Path,
          log_dir: Path | None) -> tuple[dict[int, float], float]:  # fmt: skip
    """Validation bpb by step of one variant, and its wall time in seconds (its output kept as
    <log_dir>/<variant>.log when given)."""
    args = [*CONFIG, *VARIANTS[variant], "--num-iterations", str(steps), "--eval-every", str(every),
            "--data", "parquet", "--data-dir", str(data / "base_data"), "--tokenizer-dir", str(data / "tokenizer"),
            "--checkpoint-root", str(ckpt), "--model-tag", variant, *extra]  # fmt: skip
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "nanochat.base_train", *args], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    if log_dir is not None:
        (log_dir / f"{variant}.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        sys.exit(
            f"bench.parity: {variant} failed (exit {p.returncode}): {(p.stderr or p.stdout).strip().splitlines()[-1:]}"
        )
    return {int(s): float(v) for s, v in VAL_RE.findall(p.stdout)}, time.perf_counter() - t0


def pct(a: float, b: float) -> float:
    return 100 * (a / b - 1)


def table(
    ours: dict[str, dict[int, float]], fork: dict[str, dict[int, float]], steps: list[int]
) -> list[str]:
    names = list(ours)
    head = "| step | " + " | ".join(f"{n} | {n} fork | Δ" for n in names) + " |"
    rule = "| ---: | " + " | ".join("---: | ---: | ---:" for _ in names) + " |"
    rows = [head, rule]
    for s in steps:
        cells = []
        for n in names:
            a, b = ours[n].get(s), fork.get(n, {}).get(s)
            cells += [f"{a:.6f}" if a is not None else "-", f"{b:.6f}" if b is not None else "-",
                      f"{pct(a, b):+.2f}%" if a is not None and b is not None else "-"]  # fmt: skip
        rows.append(f"| {s} | " + " | ".join(cells) + " |")
    return rows


def verdict(ours: dict[str, dict[int, float]], fork: dict[str, dict[int, float]], last: int) -> str:
    """The last line: each final bpb against the fork's, and the capacity deltas against the fork's."""
    final = {n: v.get(last) for n, v in ours.items()}
    ffinal = {n: fork.get(n, {}).get(last) for n in ours}
    if None in ffinal.values() or None in final.values():
        got = ", ".join(f"{n} {v:.6f}" for n, v in final.items() if v is not None)
        return f"RESULT: final val bpb at step {last}: {got}; no fork figures for this config to compare with"
    parts = [f"{n} {pct(final[n], ffinal[n]):+.2f}%" for n in final]
    worst = max(abs(pct(final[n], ffinal[n])) for n in final)
    deltas = []
    worst_gap = 0.0
    for a, b in (("dropless", "cap1.0"), ("dense", "cap1.0")):
        if a in final and b in final:
            mine, theirs = pct(final[b], final[a]), pct(ffinal[b], ffinal[a])
            worst_gap = max(worst_gap, abs(mine - theirs))
            deltas.append(
                f"{a}->{b} {mine:+.2f}% (fork {theirs:+.2f}%, {abs(mine - theirs):.2f} points apart)"
            )
    ok = worst <= 1.0 and worst_gap <= 0.5
    return (f"RESULT: final val bpb vs the fork: {', '.join(parts)} (target within 1%); {'; '.join(deltas)} "
            f"(target within 0.5 points): {'on target' if ok else 'OFF TARGET'}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.parity", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        type=Path,
        help="a smoke corpus dir (python -m nanochat.smoke_data --out DIR); default: made in a temp dir",
    )
    ap.add_argument("--steps", type=int, default=FORK_STEPS)
    ap.add_argument("--every", type=int, default=FORK_EVERY, help="validation every N steps")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    ap.add_argument("--compile-mode", default="auto", choices=["auto", "static", "none"])
    ap.add_argument("--depth", type=int, default=4, help="4 is the fork's figures' config")
    ap.add_argument("--log-dir", type=Path, help="keep each variant's trainer output here as <variant>.log")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        ap.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(VARIANTS)}")
    if args.steps < 1 or args.every < 1:
        ap.error("--steps and --every must be >= 1")
    if args.log_dir is not None and not args.log_dir.is_dir():
        ap.error(f"--log-dir {args.log_dir}: no such directory")
    same = args.steps == FORK_STEPS and args.every == FORK_EVERY and args.depth == 4
    extra = ["--compile-mode", args.compile_mode]
    if args.depth != 4:
        extra = [*extra, "--depth", str(args.depth)]
    with tempfile.TemporaryDirectory(prefix="bench_parity_") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "smoke"
            make_corpus(data)
        elif not (data / "base_data").is_dir() or not (data / "tokenizer").is_dir():
            ap.error(
                f"--data {data}: no base_data/ and tokenizer/ in it; make them: python -m nanochat.smoke_data --out {data}"
            )
        print(f"parity config: {' '.join(CONFIG)} --num-iterations {args.steps} --eval-every {args.every} "
              f"{' '.join(extra)}; the smoke corpus {data}")  # fmt: skip
        ours: dict[str, dict[int, float]] = {}
        for v in variants:
            ours[v], secs = train(v, data, args.steps, args.every, extra, Path(tmp) / "ckpt", args.log_dir)
            print(f"{v}: {len(ours[v])} evals in {secs:.0f}s")
    fork = FORK if same else {}
    steps = sorted({s for v in ours.values() for s in v})
    print("\nValidation bpb, this trainer beside the fork's (Δ: ours vs the fork's):\n")
    print("\n".join(table(ours, fork, steps)))
    print()
    print(verdict(ours, fork, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
