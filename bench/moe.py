"""
Forward+backward time of one feed-forward block, side by side in one run: a dense ReLU^2 MLP with
the same active FLOPs as the MoE (hidden = k x expert hidden), the MoE block dropless, at fixed
capacity 1.0 and at fixed capacity 1.25, and "experts only": the same expert matmuls on a
routing-free layout (each token copied k times, in order, into E equal groups; outputs summed),
the floor any routing sits on; each eager and torch.compile'd.

    python -m bench.moe                   # CPU default size
    python -m bench.moe --device cuda --tokens 16384 --dim 768 --profile   # a d12 layer on a GPU

At capacity 1.0 the expert matmuls do exactly the dense MLP's FLOPs, so `cap1.0/dense` measures
what the MoE block costs beyond its FLOPs. `experts/dense` is the cost of the layout alone: E
smaller matmuls instead of one big one, and moving each token's k copies in and their outputs
out (a copy and a sum, with their gradients); `cap1.0/experts` is what routing adds to that (the
router, slot assignment, gathers instead of copies). On a CPU the batched matmuls take 0-4%
longer than the dense ones (`--profile`: aten::bmm vs aten::mm); the rest is passes over the
k*T x D activations at memory speed, a share that halves when --dim doubles. Variants are timed
in interleaved rounds, so background load hits them alike; each ratio is given on the median
round and on the best round (other processes only ever add time). Inside the process nothing
lands on one variant at random: after warmup the cycle collector is frozen and off (as in the
trainer), and on a CPU malloc keeps freed memory (no page faults per step). The last lines are
the ratio that matters, eager and compiled, then the worse of the two, held to a guard (exit
status 1 when broken): `cap1.0/dense fwd+bwd: median X, best Y; guard median <= 1.15: held`.
On a machine other
processes share, `--threads 1` measures the work rather than how threads wait for each other.
`--profile` then profiles one compiled step of dense and of each MoE variant and prints the
kernels that take the time (on a GPU, by device time): where the overhead is, not only how much.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
import time

import torch

from nanochat.common import synchronize
from nanochat.gpt import MLP
from nanochat.moe import Experts, MoE, expert_capacity, probe_grouped_mm

KINDS = ["dense", "experts", "dropless", "cap1.0", "cap1.25"]
GUARD = 1.15  # cap1.0/dense median fwd+bwd: what the fixed-capacity block may cost beyond its FLOPs


class ExpertsOnly(torch.nn.Module):
    """The MoE's expert matmuls without routing: token t's k copies go to slots in order, so every
    expert gets exactly k*T/E rows; the k outputs of a token are summed. Same FLOPs, same shapes."""

    def __init__(self, dim: int, n_experts: int, topk: int, hidden: int):
        super().__init__()
        self.n_experts, self.topk = n_experts, topk
        self.experts = Experts(n_experts, dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_tok, dim = x.shape[-2], x.shape[-1]
        xb = x.reshape(n_tok, dim).repeat(self.topk, 1).view(self.n_experts, -1, dim)
        return self.experts.forward_capacity(xb).view(self.topk, n_tok, dim).sum(0).view_as(x)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory in the process: no mmap of its own per large tensor,
    no trim of the heap. By default every tensor over the mmap threshold is mapped fresh and
    unmapped when freed, so each step faults its pages in again (the kernel zeroes every page):
    time in the kernel, 13-16% of a CPU run (vmstat), landing on whichever variant allocates at the
    moment, which makes medians drift far from the best rounds. The usual CPU setting for torch
    (as jemalloc or tcmalloc would give). False where the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def print_profile(name: str, fn, device: torch.device, steps: int = 3, top: int = 12) -> None:
    """The kernels of `steps` calls of fn, by self time per step (device time on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = [(getattr(ev, attr) / steps / 1000, ev.count // steps, ev.key) for ev in prof.key_averages()]
    if not cuda:  # the ops that compute (aten calls and the compiler's kernels), not their wrappers
        rows = [r for r in rows if r[2].startswith(("aten::", "graph_"))]
    rows = sorted((r for r in rows if r[0] > 0), reverse=True)
    total = sum(r[0] for r in rows)
    print(f"profile {name}: {total:.2f} ms per step in {sum(r[1] for r in rows)} kernel calls; top {top}:")
    for ms, calls, key in rows[:top]:
        print(f"    {ms:8.3f} ms {100 * ms / total:5.1f}% x{calls:<3} {key[:90]}")


def main() -> int:
    p = argparse.ArgumentParser(prog="bench.moe", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=4096, help="tokens in the block's input (B*T)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n-experts", type=int, default=8)
    p.add_argument("--topk", type=int, default=2)
    p.add_argument("--expert-hidden-mult", type=int, default=2)
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="eager variants only")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument(
        "--profile", action="store_true", help="per-kernel profile of one compiled step of each variant"
    )
    p.add_argument(
        "--guard", type=float, default=GUARD, help="the most cap1.0/dense median allowed (exit 1 past it)"
    )
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    malloc_kept = device.type == "cpu" and keep_freed_memory()
    torch.manual_seed(0)
    d, e, k, mult = args.dim, args.n_experts, args.topk, args.expert_hidden_mult
    bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)

    def make(kind: str):
        if kind == "dense":
            m = MLP(d, k * mult * d)
        elif kind == "experts":
            m = ExpertsOnly(d, e, k, mult * d)
        else:
            cf = {"dropless": 0.0, "cap1.0": 1.0, "cap1.25": 1.25}[kind]
            m = MoE(d, e, k, mult, capacity_factor=cf, balance_coeff=0.01)
        m = m.to(device)
        with torch.no_grad():
            for prm in m.parameters():
                prm.normal_(0, prm.shape[-2] ** -0.5 if prm.dim() > 1 else 1.0)
        return m

    probe_grouped_mm(device, dtype, d, mult * d)
    x = torch.randn(1, args.tokens, d, device=device)
    g = torch.randn(1, args.tokens, d, device=device)

    def step_fn(m, moe: bool):
        def run():
            xi = x.detach().requires_grad_(True)
            with autocast:
                out = m(xi)
            if moe:
                y, aux = out
                torch.autograd.backward([y.float(), aux["aux_loss"]], [g, torch.ones((), device=device)])
            else:
                out.float().backward(g)
            m.zero_grad(set_to_none=True)

        return run

    kinds = args.kinds.split(",")
    if set(kinds) - set(KINDS) or not {"dense", "cap1.0"} <= set(kinds):
        p.error(f"--kinds: a subset of {','.join(KINDS)} with dense and cap1.0 in it")
    if "experts" in kinds and (k * args.tokens) % e:
        p.error("--tokens * --topk must be a multiple of --n-experts (the experts-only layout)")
    moe_kinds = {"dropless", "cap1.0", "cap1.25"}
    if args.profile and device.type == "cpu" and not args.no_compile:
        from torch._inductor import config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # the compiler's kernels show by name
    variants: dict[str, callable] = {}
    for kind in kinds:
        variants[f"{kind} eager"] = step_fn(make(kind), kind in moe_kinds)
    if not args.no_compile:
        for kind in kinds:  # static shapes in every variant, as the trainer's --compile-mode auto
            variants[f"{kind} compiled"] = step_fn(
                torch.compile(make(kind), dynamic=False), kind in moe_kinds
            )

    t0 = time.perf_counter()
    for fn in variants.values():  # warmup, compilation included
        for _ in range(args.warmup):
            fn()
    synchronize(device)
    warm_s = time.perf_counter() - t0
    # as the trainer after its first step: what compilation left behind is frozen and the cycle
    # collector is off, so its passes over those objects (6% of a CPU run's time, by perf) do not
    # land on whichever variant happens to be running when one triggers
    gc.collect()
    gc.freeze()
    gc.disable()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            synchronize(device)
            t = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t)

    cap = expert_capacity(args.tokens, k, e, 1.0)
    print(
        f"one FFN block fwd+bwd on {device.type} ({torch.get_num_threads()} threads, {dtype}): "
        f"{args.tokens} tokens, dim {d}, {e} experts top-{k}, expert hidden {mult * d}, "
        f"dense hidden {k * mult * d}; cap1.0 = {cap} slots/expert; warmup+compile {warm_s:.1f}s; "
        f"{args.rounds} interleaved rounds" + ("; malloc keeps freed memory" if malloc_kept else "")
    )
    best = {name: min(v) * 1000 for name, v in times.items()}
    med = {name: statistics.median(v) * 1000 for name, v in times.items()}
    print(
        f"| {'variant':<18} | {'median (ms)':>11} | {'best (ms)':>9} | {'median vs dense':>15} | {'best vs dense':>13} |"
    )
    print(f"| {'-' * 18} | {'-' * 10}: | {'-' * 8}: | {'-' * 14}: | {'-' * 12}: |")
    for name in times:
        mode = name.split()[1]
        print(
            f"| {name:<18} | {med[name]:>11.2f} | {best[name]:>9.2f} | {med[name] / med['dense ' + mode]:>15.2f} | "
            f"{best[name] / best['dense ' + mode]:>13.2f} |"
        )
    modes = [m for m in ("eager", "compiled") if f"dense {m}" in best]
    if args.profile:
        mode = modes[-1]
        for kind in kinds:
            if kind != "experts":
                print_profile(f"{kind} {mode}", variants[f"{kind} {mode}"], device)
    ratios = {
        m: (med[f"cap1.0 {m}"] / med[f"dense {m}"], best[f"cap1.0 {m}"] / best[f"dense {m}"]) for m in modes
    }
    for m in modes:
        if "experts" not in kinds:
            continue
        print(
            f"experts/dense fwd+bwd ({m}): median {med[f'experts {m}'] / med[f'dense {m}']:.2f}, "
            f"best {best[f'experts {m}'] / best[f'dense {m}']:.2f}   (E matmuls, k copies in, a sum out)"
        )
        print(
            f"cap1.0/experts fwd+bwd ({m}): median {med[f'cap1.0 {m}'] / med[f'experts {m}']:.2f}, "
            f"best {best[f'cap1.0 {m}'] / best[f'experts {m}']:.2f}   (routing, dispatch and combine)"
        )
    for m, (r_med, r_best) in ratios.items():
        print(f"cap1.0/dense fwd+bwd ({m}): median {r_med:.2f}, best {r_best:.2f}")
    worst = max(ratios.values())
    held = worst[0] <= args.guard
    print(f"cap1.0/dense fwd+bwd: median {worst[0]:.2f}, best {max(r[1] for r in ratios.values()):.2f}; "
          f"guard median <= {args.guard:.2f}: {'held' if held else 'BROKEN'}")  # fmt: skip
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
