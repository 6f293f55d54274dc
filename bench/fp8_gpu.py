"""
GPU check of FP8 training (nanochat/fp8.py): one script, one GPU, under 8 minutes (--budget-s):

    PYTHONPATH=. python -m bench.fp8_gpu             # path + numerics + throughput (< 8 min)
    PYTHONPATH=. python -m bench.fp8_gpu --quick     # path + numerics only (~1 min)

1. Path: which kernel the FP8 matmuls take. On a GPU with FP8 tensor cores (sm89+) it asserts
   that the FP8 linear and expert paths call aten::_scaled_mm (and no plain mm), by profiling
   one eager forward+backward; elsewhere it says the run is emulated.
2. Numerics on the real kernels: FP8 linear, fixed-capacity experts and dropless experts against
   bf16 (the CPU tests' tolerances), and _scaled_mm against the emulation on the same inputs.
3. Throughput of the fork's capacity-ablation leg config on this one GPU (d12, 8 experts top-2, moe-freq 1,
   expert-hidden-mult 2, seq 1024, device batch 16, fixed capacity 1.0, static compile), with
   the trainer's model, autocast and optimizer (Muon + AdamW): bf16 vs --fp8 vs
   --fp8 --fp8-include-moe-experts, then the same at d20 (device batch 8 by default: d20 MoE at
   16 x 1024 tokens is close to 80 GB). Rows print as they finish; a time budget skips what
   would not fit. The last line gives the ratios that matter (target: FP8 >= bf16 at d12,
   faster at d20).

Needs only torch (2.4+; written for 2.11) and this source tree. Runs on CPU too (emulated, tiny
model: --device cpu --depths 2 --seq 128 --vocab 512 --batch 2 --steps 3 --warmup 1 --compile none),
which is how its code is checked where no GPU is at hand.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time

import torch

from nanochat import fp8
from nanochat.common import device_peak_flops
from nanochat.data import SyntheticStream
from nanochat.gpt import GPT, GPTConfig, model_dims


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def fwd_bwd(fn, inputs, grad):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    (out.float() * grad).sum().backward()
    return [out.float()] + [t.grad.float() for t in leaves]


def count_ops(
    fn,
    names=(
        "aten::_scaled_mm",
        "aten::_scaled_grouped_mm",
        "aten::_grouped_mm",
        "aten::mm",
        "aten::bmm",
        "aten::addmm",
    ),
) -> dict[str, int]:
    """How many times each aten op ran during fn() (eager; the profiler sees the dispatcher)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = dict.fromkeys(names, 0)
    for ev in prof.events():
        if ev.name in counts:
            counts[ev.name] += 1
    return counts


# -----------------------------------------------------------------------------
# 1 + 2: path and numerics


def check_path_and_numerics(device: torch.device) -> tuple[bool, list[str]]:
    failures: list[str] = []
    on_fp8_hw = fp8.uses_scaled_mm(device)
    grouped = fp8.probe_grouped(device)
    print(
        f"path: {'torch._scaled_mm (FP8 tensor cores)' if on_fp8_hw else 'EMULATION (no FP8 matmul here)'}; "
        f"dropless forward: {'torch._scaled_grouped_mm' if grouped else 'grouped GEMM on dequantized FP8'}"
    )
    g = torch.Generator(device=device).manual_seed(0)
    E, C, D, H, M = 8, 256, 768, 1536, 2048

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device=device, generator=g) * scale

    x, w = randn(M, D).bfloat16(), randn(H, D, scale=D**-0.5)
    xb, wb = randn(E, C, D).bfloat16(), randn(E, D, H, scale=D**-0.5)
    # group ends as routing makes them: uneven, not multiples of 16, one expert empty
    offs = torch.tensor([300, 300, 900, 1100, 1500, 1800, 1901, M], device=device, dtype=torch.int32)

    # path: op counts of one eager forward+backward
    def lin():
        fwd_bwd(fp8.fp8_linear, [x, w], torch.ones(M, H, device=device))

    def bmm():
        fwd_bwd(fp8.fp8_bmm, [xb, wb], torch.ones(E, C, H, device=device))

    def grp():
        fwd_bwd(lambda a, b: fp8.fp8_grouped_mm(a, b, offs), [x, wb], torch.ones(M, H, device=device))

    for label, fn, expect in (("linear fwd+bwd", lin, 3), ("experts fixed-cap fwd+bwd", bmm, 3 * E)):
        c = count_ops(fn)
        print(
            f"  {label:26s} aten::_scaled_mm x{c['aten::_scaled_mm']}, aten::mm x{c['aten::mm']}, "
            f"aten::bmm x{c['aten::bmm']}"
        )
        if on_fp8_hw and (c["aten::_scaled_mm"] != expect or c["aten::mm"] or c["aten::bmm"]):
            failures.append(f"{label}: expected {expect} _scaled_mm calls and no mm/bmm, got {c}")
        if not on_fp8_hw and c["aten::_scaled_mm"]:
            failures.append(f"{label}: emulation must not call _scaled_mm, got {c}")
    c = count_ops(grp)
    print(
        f"  {'experts dropless fwd+bwd':26s} aten::_scaled_grouped_mm x{c['aten::_scaled_grouped_mm']}, "
        f"aten::_grouped_mm x{c['aten::_grouped_mm']}"
    )

    # numerics: FP8 against bf16 on the real kernels
    def check(label, got, ref, fwd_tol=0.06, bwd_tol=0.10):
        errs = [rel(a, b) for a, b in zip(got, ref, strict=True)]
        ok = (
            errs[0] < fwd_tol
            and all(e < bwd_tol for e in errs[1:])
            and all(torch.isfinite(t).all().item() for t in got)
        )
        print(
            f"  {label:34s} rel err fwd {errs[0]:.4f}, grads "
            + ", ".join(f"{e:.4f}" for e in errs[1:])
            + ("" if ok else "  <-- FAIL")
        )
        if not ok:
            failures.append(f"{label}: {errs}")

    gl = randn(M, H)
    check(
        "linear vs bf16",
        fwd_bwd(fp8.fp8_linear, [x, w], gl),
        fwd_bwd(lambda a, b: a @ b.bfloat16().t(), [x, w], gl),
    )
    gb = randn(E, C, H)
    check(
        "experts fixed-cap vs bf16",
        fwd_bwd(fp8.fp8_bmm, [xb, wb], gb),
        fwd_bwd(lambda a, b: torch.bmm(a, b.bfloat16()), [xb, wb], gb),
    )
    if hasattr(torch, "_grouped_mm"):
        try:
            check(
                "experts dropless vs bf16",
                fwd_bwd(lambda a, b: fp8.fp8_grouped_mm(a, b, offs), [x, wb], gl),
                fwd_bwd(lambda a, b: torch._grouped_mm(a, b.bfloat16(), offs=offs), [x, wb], gl),
            )
        except RuntimeError as e:  # _grouped_mm missing on this GPU: the trainer falls back too
            print(f"  experts dropless: torch._grouped_mm unavailable here ({str(e).splitlines()[0]})")
    if on_fp8_hw:  # the real kernel against the emulation, same inputs
        real = fwd_bwd(fp8.fp8_linear, [x, w], gl)
        fp8.set_backend("emulate")
        try:
            emu = fwd_bwd(fp8.fp8_linear, [x, w], gl)
        finally:
            fp8.set_backend("auto")
        check("_scaled_mm vs emulation (linear)", real, emu, 0.01, 0.01)
    return on_fp8_hw, failures


# -----------------------------------------------------------------------------
# 3: throughput of the fork's ablation leg on one GPU


def bench_config(args, device, depth: int, batch: int, use_fp8: bool, experts: bool) -> dict:
    torch.manual_seed(0)
    dim, heads = model_dims(depth, 64, 64)
    config = GPTConfig(
        sequence_len=args.seq,
        vocab_size=args.vocab,
        n_layer=depth,
        n_head=heads,
        n_embd=dim,
        use_moe=True,
        n_experts=8,
        expert_topk=2,
        moe_freq=1,
        expert_hidden_mult=2.0,
        moe_capacity_factor=1.0,
        balance_loss_coeff=0.01,
    )
    with torch.device(device):
        model = GPT(config)
    model.init_weights()
    if use_fp8:
        fp8.convert_to_fp8(model, include_experts=experts)
    if args.compile == "model":  # what base_train does with --compile-mode static
        train_model = torch.compile(model, dynamic=False)
    else:
        train_model = model
        if (
            args.compile == "blocks"
        ):  # identical blocks share one compiled graph: a fraction of the compile time
            for block in model.transformer.h:
                block.compile(dynamic=False)
    optimizer = model.setup_optimizer()
    loader = SyntheticStream(args.vocab, batch, args.seq, device, seed=0)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []

    def train_step():
        x, y = next(loader)
        with autocast:
            loss, _ = train_model(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())  # the trainer's one host sync per step

    t_start = time.perf_counter()
    for step in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        train_step()
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    # one more step under the profiler: which matmul kernels the compiled training step calls
    ops = count_ops(train_step)
    tokens = batch * args.seq
    dt = sum(times) / len(times)
    _, peak = device_peak_flops(device)
    tok_s = tokens / dt
    mfu = 100 * model.estimate_flops() * tok_s / peak if peak else 0.0
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    # expected _scaled_mm calls per step: 3 per FP8 linear, 3 per expert per FP8 expert matmul
    n_lin = sum(isinstance(m, fp8.Fp8Linear) for m in model.modules())
    n_exp = sum(2 * 8 for m in model.modules() if getattr(m, "fp8", False) is True)
    return {
        "dt_ms": 1000 * dt,
        "tok_s": tok_s,
        "mfu": mfu,
        "mem": mem,
        "wall": time.perf_counter() - t_start,
        "loss0": losses[0],
        "loss1": losses[-2],
        "scaled_mm": ops["aten::_scaled_mm"],
        "scaled_mm_expected": 3 * (n_lin + n_exp) if fp8.uses_scaled_mm(device) else 0,
    }


def free(device: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.fp8_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="path and numerics only")
    p.add_argument(
        "--no-checks", action="store_true", help="throughput only (bench.cuda_checks ran the checks)"
    )
    p.add_argument("--depths", default="12,20")
    p.add_argument("--batch", type=int, default=16, help="device batch size at d12 (the fork's runs)")
    p.add_argument("--batch-d20", type=int, default=8, help="device batch size at depths > 12")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32768, help="the fork tokenizer's")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (compile happens here)")
    p.add_argument("--steps", type=int, default=15, help="timed steps")
    p.add_argument(
        "--compile",
        choices=["blocks", "model", "none"],
        default="blocks",
        help="blocks: compile each block (fast to compile); model: whole model like base_train",
    )
    p.add_argument("--budget-s", type=float, default=480, help="skip configs that would end past this")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
        torch.backends.cuda.matmul.allow_tf32 = True
    t_begin = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    print(f"torch {torch.__version__} | python {sys.version.split()[0]} | device {name} | capability {cap}")

    if args.no_checks:
        on_fp8_hw, failures = fp8.uses_scaled_mm(device), []
    else:
        on_fp8_hw, failures = check_path_and_numerics(device)
    if args.quick:
        print(
            f"{'FAIL' if failures else 'OK'}: path {'_scaled_mm' if on_fp8_hw else 'emulation'}; "
            f"{len(failures)} check(s) failed"
        )
        return 1 if failures else 0

    configs = []
    for depth in (int(d) for d in args.depths.split(",")):
        batch = args.batch if depth <= 12 else args.batch_d20
        for label, use_fp8, experts in (
            ("bf16", False, False),
            ("fp8", True, False),
            ("fp8+experts", True, True),
        ):
            configs.append((depth, batch, label, use_fp8, experts))
    print(
        f"\nthroughput: MoE 8 experts top-2, expert-hidden-mult 2, seq {args.seq}, cap 1.0, "
        f"compile={args.compile}, {args.warmup} warmup + {args.steps} timed steps, one GPU"
    )
    print(
        "| depth | batch | config | dt (ms) | tok/sec | bf16_mfu | peak mem (MiB) | loss first->last "
        "| _scaled_mm/step (expected) | wall (s) |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    results: dict[tuple[int, str], dict] = {}
    longest = 0.0
    for depth, batch, label, use_fp8, experts in configs:
        elapsed = time.perf_counter() - t_begin
        estimate = max(longest * (1.0 if depth <= 12 else 2.0), 60.0)
        if elapsed + estimate > args.budget_s:
            print(
                f"| {depth} | {batch} | {label} | skipped: time budget ({elapsed:.0f}s used, ~{estimate:.0f}s needed) |"
            )
            continue
        try:
            r = bench_config(args, device, depth, batch, use_fp8, experts)
        except torch.OutOfMemoryError:
            print(f"| {depth} | {batch} | {label} | OOM |")
            free(device)
            continue
        free(device)
        longest = max(longest, r["wall"])
        results[(depth, label)] = r
        print(
            f"| {depth} | {batch} | {label} | {r['dt_ms']:.2f} | {r['tok_s']:,.0f} | {r['mfu']:.2f} | "
            f"{r['mem']:.0f} | {r['loss0']:.3f}->{r['loss1']:.3f} | {r['scaled_mm']} ({r['scaled_mm_expected']}) "
            f"| {r['wall']:.0f} |",
            flush=True,
        )
        if r["scaled_mm"] != r["scaled_mm_expected"]:
            failures.append(
                f"d{depth} {label}: {r['scaled_mm']} _scaled_mm calls in a training step, "
                f"expected {r['scaled_mm_expected']}"
            )

    ratios = []
    for depth in sorted({d for d, _ in results}):
        base = results.get((depth, "bf16"))
        for label in ("fp8", "fp8+experts"):
            if base and (depth, label) in results:
                ratios.append(
                    f"d{depth} {label}/bf16 tok/sec = {results[(depth, label)]['tok_s'] / base['tok_s']:.3f}"
                )
    print(f"\npath: {'_scaled_mm' if on_fp8_hw else 'EMULATION'} | checks failed: {len(failures)}")
    for f in failures:
        print(f"  FAIL {f}")
    print(
        "RESULT: "
        + ("; ".join(ratios) if ratios else "no throughput pair measured")
        + f" | total {time.perf_counter() - t_begin:.0f}s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
