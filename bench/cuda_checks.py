"""
The checks that only a GPU can answer, as one plain script (torch and this tree only, no pytest),
each printing PASS / FAIL / SKIP and what it measured:

    PYTHONPATH=. python -m bench.cuda_checks              # on a CUDA GPU, about a minute
    python -m bench.cuda_checks --device cpu              # here: the same code, CUDA-only parts skipped

Everything MoE runs as the trainer runs it: under bf16 autocast (on CPU, CPU autocast).
1. grouped_mm: torch._grouped_mm runs forward and backward in bf16 (sm90+), so dropless MoE
   takes the grouped path, not the T-slots fallback.
2. dropless == fixed capacity at C = T, on the device: outputs and gradients.
3. torch._grouped_mm itself (bf16, offsets on the device) runs forward and backward without a host
   sync: CUDA's sync debug mode set to "error" around the bare op. A sync here is torch's, and is
   reported as such.
4. no host sync in the MoE forward+backward: eager, the fixed-capacity and dropless blocks with
   every aten op run under sync debug mode "error" (a dispatch mode names the op that synced);
   torch._grouped_mm is let through only if check 3 found that the op itself syncs. Every grouped
   matmul must get bf16 operands (any other dtype takes ATen's per-group fallback, which reads the
   offsets on the host).
5. static compile: the fixed-capacity and dropless blocks traced whole (fullgraph, dynamic=False,
   forward and backward through AOTAutograd; no code generation, which bench.gpu's legs do), and
   the trainer's GPT (dropless and cap 1.0, bf16 and FP8 experts) compiled as the trainer compiles
   it (no fullgraph):
   one graph each, over steps whose routing changes, with recompiles made errors.
6. Muon in bf16 on the device: singular values after Newton-Schulz, and a step of the optimizer.
7. The optimizer step's time for the d12 dense and MoE models (a figure: part of the step time
   the MoE pays beyond its FFN blocks, since it has 3x the matrices).
8. FP8: which kernels the FP8 linear and expert matmuls call (aten::_scaled_mm, and
   aten::_scaled_grouped_mm for dropless where it runs), numerics against bf16 (bench.fp8_gpu).
The last line counts them.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nanochat import moe as moe_lib
from nanochat.common import synchronize
from nanochat.moe import MoE
from nanochat.muon import MuonAdamW, orthogonalize

RESULTS: list[tuple[str, str]] = []


def report(name: str, status: str, detail: str = "") -> None:
    RESULTS.append((name, status))
    print(f"[{status}] {name}{': ' + detail if detail else ''}", flush=True)


def run(name: str, fn, needs_cuda: bool, device: torch.device) -> None:
    if needs_cuda and device.type != "cuda":
        report(name, "SKIP", "needs CUDA")
        return
    t0 = time.perf_counter()
    try:
        ok, detail = fn(device)
    except Exception as e:  # a check that crashes is a failed check; the others still run
        traceback.print_exc()
        ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    report(name, "PASS" if ok else "FAIL", f"{detail} ({time.perf_counter() - t0:.1f}s)")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def make_block(cf: float, device, dim=256, n_exp=8, k=2, seed=0) -> MoE:
    torch.manual_seed(seed)
    m = MoE(dim, n_exp, k, 2.0, capacity_factor=cf, balance_coeff=0.01).to(device)
    with torch.no_grad():
        m.router.weight.normal_(0, 0.5)
        m.experts.w_fc.normal_(0, dim**-0.5)
        m.experts.w_proj.normal_(0, (2 * dim) ** -0.5)
    return m


def autocast(device):
    """The trainer's autocast: bf16 (on CPU, CPU autocast, where the same code runs)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def fwd_bwd(m: MoE, x: torch.Tensor, device) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with autocast(device):
        y, aux = m(x)
    g = torch.linspace(-1, 1, y.numel(), device=device).view_as(y)
    ((y.float() * g).sum() + aux["aux_loss"]).backward()
    out = [y.detach().float(), x.grad.float()] + [p.grad.float() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    return out


class SyncGuard(TorchDispatchMode):
    """Runs every aten op (forward and backward) with CUDA's sync debug mode at "error", so a
    host sync raises and names its op; ops in `allowed` run with the mode off. Records the operand
    dtypes of each grouped matmul."""

    def __init__(self, allowed=()):
        super().__init__()
        self.allowed = set(allowed)
        self.grouped: list[tuple[torch.dtype, torch.dtype]] = []
        self.cuda = torch.cuda.is_available()  # elsewhere: the dtypes only

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket == torch.ops.aten._grouped_mm:
            self.grouped.append((args[0].dtype, args[1].dtype))
        allowed = self.cuda and func.overloadpacket in self.allowed
        if allowed:
            torch.cuda.set_sync_debug_mode("default")
        try:
            return func(*args, **(kwargs or {}))
        except RuntimeError as e:
            if "synchronizing" in str(e):
                raise RuntimeError(f"{func} called a synchronizing CUDA operation") from e
            raise
        finally:
            if allowed:
                torch.cuda.set_sync_debug_mode("error")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        return super().__enter__()

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
        return super().__exit__(*exc)


# ---------------------------------------------------------------------------------------------


def check_grouped_mm(device):
    ok = moe_lib.probe_grouped_mm(device, torch.bfloat16, 256, 512)
    return ok, f"torch._grouped_mm bf16 fwd+bwd {'runs' if ok else 'does NOT run'} here"


def check_dropless_equals_capacity(device):
    dropless = make_block(0.0, device)
    fixed = make_block(8.0, device)  # C = T: nothing dropped
    fixed.load_state_dict(dropless.state_dict())
    x = torch.randn(4, 512, 256, device=device)
    a, b = fwd_bwd(dropless, x, device), fwd_bwd(fixed, x, device)
    errs = [rel(p, q) for p, q in zip(a, b, strict=True)]
    grouped = moe_lib.grouped_mm_usable(device, torch.bfloat16, 256, 512)
    return max(
        errs
    ) < 2e-2, f"grouped path {grouped}; rel err out {errs[0]:.1e}, grads max {max(errs[1:]):.1e}"


GROUPED_MM_SYNCS: list[str] = []  # filled by check_grouped_mm_sync: what the bare op's sync said


def check_grouped_mm_sync(device):
    x = torch.randn(1024, 256, device=device, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(8, 256, 512, device=device, dtype=torch.bfloat16, requires_grad=True)
    offs = torch.tensor([0, 100, 300, 300, 600, 700, 1000, 1024], device=device, dtype=torch.int32)
    g = torch.randn(1024, 512, device=device, dtype=torch.bfloat16)
    torch._grouped_mm(x, w, offs=offs).backward(g)  # warm-up: kernel selection, workspaces
    try:
        with SyncGuard():
            torch._grouped_mm(x, w, offs=offs).backward(g)
    except RuntimeError as e:
        GROUPED_MM_SYNCS.append(str(e).splitlines()[0])
        return False, (f"torch {torch.__version__}: torch._grouped_mm itself syncs with the host "
                       f"({GROUPED_MM_SYNCS[0]}); check 4 lets that op through")  # fmt: skip
    return True, "torch._grouped_mm bf16 fwd+bwd (device offsets): no host sync"


def check_no_host_sync(device):
    x = torch.randn(2, 1024, 256, device=device)
    blocks = {"cap 1.0": make_block(1.0, device), "dropless": make_block(0.0, device)}
    for m in blocks.values():  # first calls probe and warm up: not what is checked
        fwd_bwd(m, x, device)
    allowed = [torch.ops.aten._grouped_mm] if GROUPED_MM_SYNCS else []
    guard = SyncGuard(allowed)
    with guard:
        for m in blocks.values():
            fwd_bwd(m, x, device)
    dtypes = sorted({f"{a}".removeprefix("torch.") for pair in guard.grouped for a in pair})
    ok = bool(guard.grouped) and dtypes == ["bfloat16"]
    if device.type == "cuda":
        let_through = ", torch._grouped_mm let through (it syncs itself: check 3)" if allowed else ""
        what = f"sync debug mode 'error': no host sync{let_through}"
    else:
        what = "sync debug mode needs CUDA: grouped matmul dtypes only"
    return ok, (f"fixed capacity and dropless fwd+bwd (bf16 autocast), {what}; "
                f"{len(guard.grouped)} grouped matmuls, operands {'/'.join(dtypes) or 'none'}")  # fmt: skip


def check_static_compile(device):
    import torch._dynamo
    import torch._dynamo.testing

    from nanochat.gpt import GPT, GPTConfig

    grouped = moe_lib.probe_grouped_mm(device, torch.bfloat16, 256, 512)  # as the trainer, before compiling
    seen = []
    for cf in (1.0, 0.0):  # the MoE block alone, traced whole
        torch._dynamo.reset()
        m = make_block(cf, device)
        counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(m, fullgraph=True, dynamic=False, backend=counter)
        loads = []
        with torch._dynamo.config.patch(error_on_recompile=True):
            for step in range(4):
                torch.manual_seed(100 + step)
                x = torch.randn(2, 512, 256, device=device) * (1 + step)  # routing changes
                with autocast(device):
                    y, aux = compiled(x)
                (y.float().square().mean() + aux["aux_loss"]).backward()
                loads.append(tuple(aux["load"].tolist()))
        seen.append((f"block cap {cf:g}" if cf else "block dropless", counter.frame_count, len(set(loads))))
    # the trainer's model, compiled as the trainer does (graph breaks allowed, counted), in bf16
    # and with FP8 experts
    for cf, fp8 in ((1.0, False), (0.0, False), (1.0, True), (0.0, True)):
        torch._dynamo.reset()
        torch.manual_seed(0)
        cfg = GPTConfig(sequence_len=256, vocab_size=512, n_layer=2, n_head=2, n_embd=256, use_moe=True,
                        n_experts=8, expert_topk=2, moe_capacity_factor=cf)  # fmt: skip
        with torch.device(device):
            model = GPT(cfg)
        model.init_weights()
        if fp8:
            from nanochat.fp8 import convert_to_fp8

            convert_to_fp8(model, include_experts=True)
        counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(model, dynamic=False, backend=counter)
        loads = []
        with torch._dynamo.config.patch(error_on_recompile=True):
            for step in range(3):
                idx = torch.randint(
                    0, 512, (4, 256), device=device, generator=torch.Generator(device).manual_seed(step)
                )
                with autocast(device):
                    loss, stats = compiled(idx, idx.roll(-1, 1))
                loss.backward()
                model.zero_grad(set_to_none=True)
                loads.append(tuple(stats["load"].tolist()))
        name = ("GPT FP8 " if fp8 else "GPT ") + (f"cap {cf:g}" if cf else "dropless")
        seen.append((name, counter.frame_count, len(set(loads))))
    torch._dynamo.reset()
    ok = all(graphs == 1 and routings > 1 for _, graphs, routings in seen)
    return ok, "; ".join(
        f"{name}: {graphs} graph(s), {routings} routings" for name, graphs, routings in seen
    ) + f", 0 recompiles (bf16 autocast; dropless {'grouped' if grouped else 'as capacity T: NO grouped_mm'})"


def check_muon(device):
    shape = (8, 768, 1536) if device.type == "cuda" else (2, 192, 384)  # a d12 expert bank on the GPU
    g = torch.randn(*shape, device=device)
    s = torch.linalg.svdvals(orthogonalize(g).float())
    p = torch.nn.Parameter(torch.randn(*shape, device=device) * 0.02)
    p.grad = g
    opt = MuonAdamW([dict(kind="muon", params=[p], lr=0.02, momentum=0.95, beta2=0.95, ns_steps=5,
                          weight_decay=0.1, in_out=True)])  # fmt: skip
    before = p.detach().clone()
    opt.step()
    moved = (p.detach() - before).float().norm().item()
    ok = 0.5 < s.min().item() and s.max().item() < 1.3 and torch.isfinite(p).all().item() and moved > 0
    return (
        ok,
        f"Newton-Schulz ({'bf16' if device.type == 'cuda' else 'fp32'}) singular values in [{s.min():.2f}, {s.max():.2f}]; step moved {moved:.3f}",
    )


def check_optimizer_time(device):
    """Not a check but a figure the MoE/dense throughput ratio needs: the optimizer step of the d12
    models (on CPU a d2 stand-in). The MoE has 3x the matrices, all orthogonalized by Muon."""
    from nanochat.gpt import GPT, GPTConfig

    cuda = device.type == "cuda"
    depth, width = (12, 768) if cuda else (2, 128)
    times = {}
    for name, moe in (("dense", False), ("MoE 8x top-2", True)):
        cfg = GPTConfig(sequence_len=1024, vocab_size=32768 if cuda else 512, n_layer=depth, n_head=width // 64,
                        n_embd=width, use_moe=moe, n_experts=8, expert_topk=2, moe_capacity_factor=1.0)  # fmt: skip
        with torch.device(device):
            model = GPT(cfg)
        model.init_weights()
        opt = model.setup_optimizer()
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        steps = []
        for _ in range(6):  # 2 warm-up steps, then 4 timed
            synchronize(device)
            t0 = time.perf_counter()
            opt.step()
            synchronize(device)
            steps.append(time.perf_counter() - t0)
        times[name] = sorted(steps[2:])[1] * 1e3
        del model, opt
    dense, moe = times["dense"], times["MoE 8x top-2"]
    return True, (f"optimizer step (Muon + AdamW, one rank) at d{depth}: dense {dense:.1f} ms, MoE 8x top-2 "
                  f"{moe:.1f} ms (+{moe - dense:.1f} ms per optimizer step)")  # fmt: skip


def check_fp8(device):
    from bench.fp8_gpu import check_path_and_numerics

    on_fp8_hw, failures = check_path_and_numerics(device)
    for f in failures:
        print(f"    {f}")
    return not failures, f"{'_scaled_mm' if on_fp8_hw else 'EMULATION'}; {len(failures)} failure(s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.cuda_checks", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
        name, cap = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
    else:
        name, cap = "cpu", None
    print(f"torch {torch.__version__} | python {sys.version.split()[0]} | device {name} | capability {cap}")
    run("grouped_mm (dropless path)", check_grouped_mm, True, device)
    run("dropless == fixed capacity at C = T", check_dropless_equals_capacity, False, device)
    run("torch._grouped_mm without a host sync (the op alone)", check_grouped_mm_sync, True, device)
    run("no host sync in the MoE forward+backward", check_no_host_sync, False, device)
    run("static compile: one graph, no recompile", check_static_compile, False, device)
    run("Muon on the device", check_muon, False, device)
    run("optimizer step time, dense vs MoE", check_optimizer_time, False, device)
    run("FP8 kernel path and numerics", check_fp8, False, device)
    counts = {s: sum(1 for _, st in RESULTS if st == s) for s in ("PASS", "FAIL", "SKIP")}
    print(f"CUDA checks: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
