"""FP8 training (nanochat/fp8.py) on CPU: numerics of the emulated FP8 matmuls against bf16,
scale edge cases, CUDA's _scaled_mm rules enforced on CPU, the MoE expert paths, model conversion,
static compile of an FP8 MoE block, and one cpu-smoke MoE leg under torchrun with FP8.

Tolerances (relative Frobenius error against a bf16 matmul of the same inputs): forward <= 6%
(e4m3 keeps 3 mantissa bits: unit roundoff 2^-4), backward <= 10% (the gradient is e5m2, 2
mantissa bits: unit roundoff 2^-3); an expert MLP (two FP8 matmuls with relu^2 between, which
doubles the relative error of its input) <= 10% forward, <= 15% backward. Errors of random data sit near a third of these bounds; each
test also requires a nonzero error, so a path that silently skipped FP8 would fail.
"""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from nanochat import fp8
from nanochat.moe import Experts, MoE

FWD_TOL, BWD_TOL = 0.06, 0.10
MLP_FWD_TOL, MLP_BWD_TOL = 0.10, 0.15  # expert MLPs: two FP8 matmuls in a row, relu^2 between
ROOT = Path(__file__).resolve().parents[1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def fwd_bwd(fn, *inputs, grad=None):
    """Run fn on leaf copies of inputs; return output and input gradients (float32)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    if grad is None:
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out.float() * grad).sum().backward()
    return out.float(), [t.grad.float() for t in leaves]


def assert_fp8_close(got, ref, fwd_tol=FWD_TOL, bwd_tol=BWD_TOL):
    out, grads = got
    rout, rgrads = ref
    assert 1e-4 < rel(out, rout) < fwd_tol, rel(out, rout)
    for g, rg in zip(grads, rgrads, strict=True):
        assert torch.isfinite(g).all()
        assert 1e-4 < rel(g, rg) < bwd_tol, rel(g, rg)


# -----------------------------------------------------------------------------
# dense linear


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [64, 77])  # 77: the token dim is padded to a multiple of 16
def test_linear_forward_backward_against_bf16(tokens):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, 256, generator=g).bfloat16()
    w = torch.randn(384, 256, generator=g) * 0.05  # fp32 master weight, as in training
    got = fwd_bwd(fp8.fp8_linear, x, w)
    ref = fwd_bwd(lambda a, b: a @ b.bfloat16().t(), x, w)
    assert got[0].shape == (tokens, 384)
    assert_fp8_close(got, ref)
    # outputs bf16; gradients come back in the dtypes of x and of the master weight
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = fp8.fp8_linear(xl, wl)
    y.float().sum().backward()
    assert (y.dtype, xl.grad.dtype, wl.grad.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)


def test_amax_zero_gives_zeros_not_nan():
    x = torch.zeros(32, 128, requires_grad=True)
    w = torch.zeros(128, 128, requires_grad=True)
    q, inv = fp8.quantize(x.detach(), fp8.E4M3)
    assert torch.isfinite(inv) and inv > 0 and (q.float() == 0).all()
    y = fp8.fp8_linear(x, w)
    y.float().sum().backward()  # the gradient w.r.t. y is 1: nonzero, but both products are zero
    for t in (y, x.grad, w.grad):
        assert torch.isfinite(t).all() and (t == 0).all()


def test_values_past_fp8_range_saturate_and_stay_accurate():
    g = torch.Generator().manual_seed(1)
    # magnitudes far past e4m3's 448 (and e5m2's 57344) in both forward and backward
    x = torch.randn(64, 128, generator=g) * 1e6
    w = torch.randn(256, 128, generator=g) * 1e3
    grad = torch.randn(64, 256, generator=g) * 1e7
    got = fwd_bwd(fp8.fp8_linear, x, w, grad=grad)
    ref = fwd_bwd(lambda a, b: a @ b.t(), x, w, grad=grad)
    assert torch.isfinite(got[0]).all()
    assert_fp8_close(got, ref)
    # the cast itself saturates: scaled values that round past the max land on the max
    for amax in (3.0, 1e-7, 7.77e5, 123456.789):
        t = torch.tensor([amax, -amax, amax / 3])
        for dtype, fmax in ((fp8.E4M3, 448.0), (fp8.E5M2, 57344.0)):
            q, inv = fp8.quantize(t, dtype)
            assert torch.isfinite(q.float()).all()
            assert q.float().abs().max().item() == fmax
            assert rel(q.float() * inv, t) < 0.13
    # one outlier: everything else is scaled down with it, nothing overflows
    t = torch.tensor([1e30, 1.0, -2.0])
    q, inv = fp8.quantize(t, fp8.E4M3)
    assert torch.isfinite(q.float()).all() and q.float()[0] == 448.0


def test_emulation_matches_cpu_scaled_mm_kernel():
    # CPU's torch._scaled_mm is a real FP8 kernel: same operands and scales, same answer
    g = torch.Generator().manual_seed(2)
    a, _ = fp8.quantize(torch.randn(48, 64, generator=g), fp8.E5M2)
    b, _ = fp8.quantize(torch.randn(32, 64, generator=g), fp8.E4M3)
    sa, sb = torch.tensor(0.37), torch.tensor(2.5)
    ours = fp8.fp8_mm(a, b.t(), sa, sb, torch.float32, use_scaled_mm=False)
    kernel = torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)
    assert rel(ours, kernel) < 1e-6


def test_cuda_scaled_mm_rules_are_enforced_on_cpu():
    a = torch.zeros(32, 64).to(fp8.E4M3)
    b_cm = torch.zeros(48, 64).to(fp8.E4M3).t()  # [64, 48] column-major: allowed
    one = torch.tensor(1.0)
    assert fp8.fp8_mm(a, b_cm, one, one).shape == (32, 48)
    with pytest.raises(ValueError, match="column-major"):
        fp8.fp8_mm(a, b_cm.contiguous(), one, one)  # row-major second operand: CUDA rejects
    with pytest.raises(ValueError, match="row-major"):
        fp8.fp8_mm(a.t().contiguous().t(), b_cm, one, one)
    with pytest.raises(ValueError, match="multiples of 16"):
        fp8.fp8_mm(torch.zeros(32, 40).to(fp8.E4M3), torch.zeros(48, 40).to(fp8.E4M3).t(), one, one)
    with pytest.raises(ValueError, match="e5m2 x e5m2"):
        fp8.fp8_mm(a.to(fp8.E5M2), b_cm.t().contiguous().to(fp8.E5M2).t(), one, one)


def test_backend_choice(monkeypatch):
    assert not fp8.uses_scaled_mm(torch.device("cpu"))  # CPU always emulates
    assert not fp8.device_has_fp8_matmul("cpu")
    # on a GPU, compiled code decides the path from the cache convert_to_fp8 filled: a dict read
    # that dynamo folds into the graph (no torch.cuda query, no graph break)
    monkeypatch.setitem(fp8._CUDA_FP8, 0, True)
    f = torch.compile(
        lambda x: x + 1 if fp8.uses_scaled_mm(torch.device("cuda", 0)) else x - 1,
        fullgraph=True,
        backend="eager",
    )
    assert f(torch.zeros(2)).tolist() == [1.0, 1.0]
    fp8.set_backend("emulate")
    try:
        assert not fp8.uses_scaled_mm(torch.device("cuda", 0))
    finally:
        fp8.set_backend("auto")


# -----------------------------------------------------------------------------
# MoE experts (the real call sites in moe.py)


def _experts(n_experts=4, dim=128, hidden=256, seed=3):
    torch.manual_seed(seed)
    ex = Experts(n_experts, dim, hidden)
    nn.init.normal_(ex.w_fc, std=dim**-0.5)
    nn.init.normal_(ex.w_proj, std=hidden**-0.5)
    # experts with very different weight ranges: per-expert scales keep the small one accurate
    with torch.no_grad():
        ex.w_fc[0] *= 300.0
        ex.w_proj[1] *= 1e-3
    return ex


def _run_experts(ex, fp8_on, fn, *inputs):
    ex.fp8 = fp8_on
    ex.zero_grad()
    out, grads = fwd_bwd(fn, *inputs)
    return out, grads + [ex.w_fc.grad.clone(), ex.w_proj.grad.clone()]


@pytest.mark.slow
def test_experts_fixed_capacity_against_bf16():
    ex = _experts()
    x = torch.randn(4, 48, 128).bfloat16()  # [E, C, D], C = 48
    f = lambda t: ex.forward_capacity(t)
    got = _run_experts(ex, True, f, x)
    ref = _run_experts(ex, False, f, x)
    assert_fp8_close(got, ref, MLP_FWD_TOL, MLP_BWD_TOL)
    # per expert: the experts with huge or tiny weights are as accurate as the others (one scale
    # per tensor would crush experts 2 and 3 toward zero next to expert 0's huge activations)
    for e in range(4):
        assert rel(got[0][e], ref[0][e]) < MLP_FWD_TOL
        for g, rg in zip(got[1], ref[1], strict=True):
            assert rel(g[e], rg[e]) < MLP_BWD_TOL


@pytest.mark.slow
def test_experts_dropless_against_bf16():
    ex = _experts()
    x = torch.randn(90, 128).bfloat16()
    offs = torch.tensor([20, 20, 70, 90], dtype=torch.int32)  # expert 1 gets no rows
    f = lambda t: ex.forward_grouped(t, offs)
    got = _run_experts(ex, True, f, x)
    ref = _run_experts(ex, False, f, x)
    assert_fp8_close((got[0], got[1][:1]), (ref[0], ref[1][:1]), MLP_FWD_TOL, MLP_BWD_TOL)
    starts = [0, 20, 20, 70]
    for e in (0, 2, 3):
        rows = slice(starts[e], int(offs[e]))
        assert rel(got[0][rows], ref[0][rows]) < MLP_FWD_TOL
        assert rel(got[1][0][rows], ref[1][0][rows]) < MLP_BWD_TOL
        for g, rg in zip(got[1][1:], ref[1][1:], strict=True):
            assert rel(g[e], rg[e]) < MLP_BWD_TOL
    for g, rg in zip(got[1][1:], ref[1][1:], strict=True):  # the empty expert's weight grads: zero
        assert (g[1] == 0).all() and (rg[1] == 0).all()


def test_fp8_bmm_matches_fp8_grouped_mm():
    # one quantization recipe for both dispatch modes: same rows, same answer
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 32, 128, generator=g)
    w = torch.randn(3, 128, 128, generator=g) * 0.1
    a = fp8.fp8_bmm(x, w).float().reshape(96, 128)
    offs = torch.tensor([32, 64, 96], dtype=torch.int32)
    b = fp8.fp8_grouped_mm(x.reshape(96, 128), w, offs).float()
    assert rel(a, b) < 1e-2


def test_dropless_fallback_without_grouped_mm_matches(monkeypatch):
    # GPUs without torch._grouped_mm (pre-sm90) take masked per-expert GEMMs: same FP8 numerics
    g = torch.Generator().manual_seed(6)
    x = torch.randn(50, 128, generator=g).bfloat16()
    w = torch.randn(3, 128, 144, generator=g) * 0.1
    offs = torch.tensor([17, 17, 50], dtype=torch.int32)
    f = lambda a, b: fp8.fp8_grouped_mm(a, b, offs)
    grad = torch.randn(50, 144, generator=g)
    native = fwd_bwd(f, x, w, grad=grad)
    monkeypatch.setitem(fp8._GROUPED_MM, ("cpu", None), False)
    assert not fp8.grouped_mm_native(torch.device("cpu"))
    masked = fwd_bwd(f, x, w, grad=grad)
    for a, b in zip([native[0], *native[1]], [masked[0], *masked[1]], strict=True):
        assert rel(a, b) < 1e-2


# -----------------------------------------------------------------------------
# conversion and compile


class _Block(nn.Module):
    """A transformer-ish block with the names nanochat's gpt.py uses, an MoE FFN and a head."""

    def __init__(self, dim=128, vocab=512, capacity_factor=1.0):
        super().__init__()
        self.attn = nn.Module()
        self.attn.c_q = nn.Linear(dim, dim, bias=False)
        self.attn.c_proj = nn.Linear(dim, dim, bias=False)
        self.small = nn.Linear(dim, 40, bias=False)  # 40 is not a multiple of 16: skipped
        self.moe = MoE(dim, n_experts=4, topk=2, hidden_mult=2, capacity_factor=capacity_factor)
        for p in self.moe.experts.parameters():
            nn.init.normal_(p, std=0.05)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, x):
        x = x + self.attn.c_proj(torch.relu(self.attn.c_q(x)))
        y, aux = self.moe(x)
        return self.lm_head(x + y).float(), aux["aux_loss"]


def test_convert_to_fp8_counts_kinds_and_log_line():
    m = _Block()
    params_before = {n: p for n, p in m.named_parameters()}
    info = fp8.convert_to_fp8(m, include_experts=True)
    assert isinstance(m.attn.c_q, fp8.Fp8Linear) and isinstance(m.attn.c_proj, fp8.Fp8Linear)
    assert isinstance(m.lm_head, fp8.Fp8Linear)  # the output head too, as the fork
    assert type(m.moe.router) is nn.Linear
    assert type(m.small) is nn.Linear and info["skipped"] == ["small"]
    assert m.moe.experts.fp8 is True
    assert info["linear"] == 3 and info["expert_matrices"] == 8 and info["converted"] == 11
    # same parameter objects: optimizer groups built before conversion stay valid
    assert all(p is params_before[n] for n, p in m.named_parameters())
    line = info["log_line"]
    assert "\n" not in line
    assert line.startswith("✓ FP8 training enabled (tensorwise scaling, MoE experts included)")
    assert "converted 11 layers, skipped 1" in line
    assert "attn c_q/c_proj x2" in line and "lm_head x1" in line and "experts w_fc/w_proj x8" in line
    assert "kept in high precision: router" in line
    assert "EMULATED on cpu" in line  # said once, in the same line

    m2 = _Block()
    info2 = fp8.convert_to_fp8(m2, include_experts=False)
    assert m2.moe.experts.fp8 is False and info2["expert_matrices"] == 0
    assert "MoE experts in bf16" in info2["log_line"]


@pytest.mark.slow
@pytest.mark.parametrize("capacity_factor", [1.0, 0.0])
def test_static_compile_fp8_moe_block_fullgraph_no_recompile(capacity_factor):
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(5)
    m = _Block(capacity_factor=capacity_factor)
    fp8.convert_to_fp8(m, include_experts=True)
    compiled = torch.compile(m, fullgraph=True, dynamic=False, backend="aot_eager")
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(3):  # new data each step, so routing (and drops / offs) change
            x = torch.randn(2, 32, 128, generator=torch.Generator().manual_seed(step))
            with torch.autocast("cpu", dtype=torch.bfloat16):  # as the trainer runs on GPU
                logits, aux = compiled(x)
            loss = logits.logsumexp(-1).mean() + aux
            loss.backward()
            opt.step()
            opt.zero_grad()
            assert torch.isfinite(loss)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames_before == 1


def test_high_precision_runs_the_plain_matmuls_eager_and_compiled():
    """Validation runs without FP8, as the fork's: inside high_precision() a converted model gives
    the unconverted model's output; compiled, the switch is guarded (a graph of its own), and
    outside it FP8 is back."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(3)
    plain = _Block(capacity_factor=1.0)
    m = _Block(capacity_factor=1.0)
    m.load_state_dict(plain.state_dict())
    fp8.convert_to_fp8(m, include_experts=True)
    x = torch.randn(2, 32, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = plain(x)
        compiled = torch.compile(m, fullgraph=True, dynamic=False, backend="aot_eager")
        for fn in (m, compiled):
            before, _ = fn(x)
            with fp8.high_precision():
                high, _ = fn(x)
            torch.testing.assert_close(high, ref)
            after, _ = fn(x)
            assert torch.equal(after, before) and not torch.allclose(after, ref, rtol=1e-4, atol=1e-4)
    assert fp8.active()
    torch._dynamo.reset()


def test_flops_per_token_count_the_fp8_layers():
    # MFU stays bf16-equivalent: the FLOPs estimate after conversion equals 6 x the active matmul
    # parameters counted from the converted model itself (FP8 linears and FP8 experts included;
    # upstream nanochat once dropped FP8 layers from it and reported MFU ~10x low)
    from nanochat.gpt import GPT, GPTConfig

    c = GPTConfig(
        sequence_len=64,
        vocab_size=512,
        n_layer=2,
        n_head=2,
        n_embd=128,
        use_moe=True,
        n_experts=4,
        expert_topk=2,
        expert_hidden_mult=2,
        moe_capacity_factor=1.0,
    )
    model = GPT(c)
    before = model.estimate_flops()
    info = fp8.convert_to_fp8(model, include_experts=True)
    assert info["linear"] == 9 and info["expert_matrices"] == 16  # 2 x (q, k, v, proj) + lm_head
    active = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    fp8_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, fp8.Fp8Linear))
    experts = [m for m in model.modules() if getattr(m, "fp8", False) is True]
    active += sum(p.numel() * c.expert_topk // c.n_experts for m in experts for p in m.parameters())
    attention = 12 * c.n_embd * (c.sequence_len // 2 + c.sequence_len)  # SSSL over 2 layers: S, L
    assert fp8_linear > 0 and len(experts) == 2
    assert model.estimate_flops() == before == 6 * active + attention


STEP_RE = re.compile(r"^step (\d+)/(\d+) .*\| loss: ([0-9.]+)")


@pytest.mark.slow
def test_cpu_smoke_moe_leg_trains_with_fp8_under_torchrun(tmp_path, smoke_corpus):
    # the registry's cpu-smoke fixed-capacity MoE leg, exactly as the cockpit would launch it
    # (its corpus where the prepare step would make it), plus the seed's FP8 flags and 20 steps
    from helpers import registry_file

    from cockpit import registry

    leg = registry.load(registry_file(tmp_path, corpus=smoke_corpus)).find_leg("cpu-smoke/moe_cap1p0")
    args = leg.trainer_args(tmp_path) + ["--fp8", "--fp8-include-moe-experts", "--num-iterations", "20"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={leg.nproc_per_node}",
        "-m",
        leg.module,
        "--",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    fp8_lines = [ln for ln in out.splitlines() if ln.startswith("✓ FP8 training enabled")]
    assert len(fp8_lines) == 1, out[-3000:]  # rank 0 only, once
    assert "MoE experts included" in fp8_lines[0] and "experts w_fc/w_proj x16" in fp8_lines[0]
    assert "FP8 EMULATED on cpu" in fp8_lines[0]
    losses = [float(m.group(3)) for ln in out.splitlines() if (m := STEP_RE.match(ln))]
    assert len(losses) == 20, out[-3000:]
    assert all(math.isfinite(v) for v in losses)
    # falling (6.93 -> 6.84 over the last 5 seen: the fork's recipe scales every lr by sqrt(1024 / 2^19))
    assert sum(losses[-5:]) / 5 < losses[0] - 0.05 and losses[-1] < losses[9] < losses[0], losses
