"""
The checks that only a GPU can answer, as one plain script (torch and this tree only, no pytest),
each printing PASS / FAIL / SKIP and what it measured:

    PYTHONPATH=. python -m bench.cuda_checks              # on a CUDA GPU, about a minute
    python -m bench.cuda_checks --device cpu              # here: the same code, CUDA-only parts skipped

1. grouped_mm: torch._grouped_mm runs forward and backward in bf16 (sm90+), so dropless MoE
   takes the grouped path, not the T-slots fallback.
2. dropless == fixed capacity at C = T, on the device under bf16 autocast: outputs and gradients.
3. no host sync: an eager forward+backward of the fixed-capacity and dropless blocks under
   torch.cuda.set_sync_debug_mode("error") (any .item(), nonzero, or sync-ing copy raises).
4. static compile: the fixed-capacity and dropless blocks traced whole (fullgraph, dynamic=False,
   forward and backward through AOTAutograd; no code generation, which bench.gpu's legs do) over
   steps whose routing changes, with recompiles made errors.
5. Muon in bf16 on the device: singular values after Newton-Schulz, and a step of the optimizer.
6. FP8: which kernels the FP8 linear and expert matmuls call (aten::_scaled_mm, and
   aten::_scaled_grouped_mm for dropless where it runs), numerics against bf16 (bench.fp8_gpu).
The last line counts them.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

from nanochat import moe as moe_lib
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


def fwd_bwd(m: MoE, x: torch.Tensor, device) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        y, aux = m(x)
    g = torch.linspace(-1, 1, y.numel(), device=device).view_as(y)
    ((y.float() * g).sum() + aux["aux_loss"]).backward()
    out = [y.detach().float(), x.grad.float()] + [p.grad.float() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    return out


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
    grouped = moe_lib.grouped_mm_usable(device, torch.bfloat16 if device.type == "cuda" else x.dtype, 256, 512)
    return max(errs) < 2e-2, f"grouped path {grouped}; rel err out {errs[0]:.1e}, grads max {max(errs[1:]):.1e}"


def check_no_host_sync(device):
    x = torch.randn(2, 1024, 256, device=device)
    blocks = [make_block(1.0, device), make_block(0.0, device)]
    for m in blocks:  # first calls probe and warm up: not what is checked
        fwd_bwd(m, x, device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for m in blocks:
            fwd_bwd(m, x, device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return True, "fixed capacity and dropless forward+backward ran with syncs made errors"


def check_static_compile(device):
    import torch._dynamo

    counts = []
    for cf in (1.0, 0.0):
        torch._dynamo.reset()
        m = make_block(cf, device)
        compiled = torch.compile(m, fullgraph=True, dynamic=False, backend="aot_eager")
        loads = []
        with torch._dynamo.config.patch(error_on_recompile=True):
            for step in range(4):
                torch.manual_seed(100 + step)
                x = torch.randn(2, 512, 256, device=device) * (1 + step)  # routing changes
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y, aux = compiled(x)
                (y.float().square().mean() + aux["aux_loss"]).backward()
                loads.append(tuple(aux["load"].tolist()))
        counts.append(len(set(loads)))
    torch._dynamo.reset()
    return all(c > 1 for c in counts), f"cap 1.0 and dropless: 4 steps, routings seen {counts}, 0 recompiles"


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
    return ok, f"Newton-Schulz ({'bf16' if device.type == 'cuda' else 'fp32'}) singular values in [{s.min():.2f}, {s.max():.2f}]; step moved {moved:.3f}"


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
    run("no host sync in the MoE forward+backward", check_no_host_sync, True, device)
    run("static compile, fullgraph, no recompile", check_static_compile, True, device)
    run("Muon on the device", check_muon, False, device)
    run("FP8 kernel path and numerics", check_fp8, False, device)
    counts = {s: sum(1 for _, st in RESULTS if st == s) for s in ("PASS", "FAIL", "SKIP")}
    print(f"CUDA checks: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
