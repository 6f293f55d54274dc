"""
FP8 training: tensorwise-scaled e4m3 / e5m2 matmuls for linear layers and MoE experts.

The recipe (the "tensorwise" recipe of torchao / the user's fork):
- forward: input and weight are cast to float8_e4m3fn, each with one fp32 scale
  s = 448 / amax(|t|), so the largest value lands on the edge of the e4m3 range; the matmul
  accumulates in fp32 and writes bf16, undoing the scales with their reciprocals.
- backward: the output gradient is cast to float8_e5m2 (more range, less precision: gradients
  span many decades) with its own tensorwise scale; both gradient matmuls take one e5m2 and one
  e4m3 operand.
- amax is a device tensor: there is no .item(), no host sync, no data-dependent Python, so the
  whole path traces into one torch.compile graph. amax = 0 (an all-zero tensor) is clamped to a
  tiny epsilon, giving a finite scale and an all-zero result instead of inf/nan. Every cast
  clamps to the format's finite range first (saturation): float8_e4m3fn has no inf, and a value
  past its range must not become nan.

GPU check (path taken, numerics on real kernels, tok/sec bf16 vs FP8): python -m bench.fp8_gpu

Where the matmul runs:
- CUDA devices with compute capability >= 8.9 (Ada, Hopper, Blackwell): torch._scaled_mm.
- Elsewhere (CPU, Ampere and older): an emulation that quantizes to FP8 exactly the same way,
  then does the matmul in higher precision on the FP8 values. Same numerics, no speed-up; it lets
  every test run on CPU and the log says once that FP8 is emulated.
Both backends go through the same operand preparation and the same checks of _scaled_mm's CUDA
rules (first operand row-major, second column-major, all dims multiples of 16, fp32 scalar
scales), because CPU's _scaled_mm accepts layouts CUDA rejects: a layout bug must fail here too.

MoE experts (see fp8_bmm and fp8_grouped_mm): every operand gets one scale per expert (its
weights, its slice of the activations, its slice of the output gradient). Each expert is its own
matmul with its own range, and with one scale per tensor a single expert with large activations
(routing is uneven, and early in training some experts' outputs grow fast) would push every other
expert's values toward the bottom of e4m3's range, into subnormals and zero; the tests show it.
It costs nothing extra: for the fixed-capacity buffers [E, C, K] it is an amax over (C, K); in
dropless mode a row amax scattered into E bins by each row's expert (found on the device from
offs), still without a host sync. The per-row form is what _scaled_grouped_mm's rowwise scales
take directly.
"""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
E5M2_MAX = torch.finfo(E5M2).max  # 57344.0
AMAX_EPS = 1e-12  # amax floor: an all-zero tensor gets a finite scale (448e12), not inf

# -----------------------------------------------------------------------------
# Backend choice: torch._scaled_mm on capable CUDA devices, emulation elsewhere.

_BACKEND = "auto"  # "auto" or "emulate" (forces emulation everywhere; for tests and the GPU bench)
_CUDA_FP8: dict[int | None, bool] = {}  # CUDA device index -> has FP8 tensor cores
_GROUPED_FP8: dict[int, bool] = {}  # device index -> torch._scaled_grouped_mm works and matches (probed)
_GROUPED_MM: dict[tuple, bool] = {}  # (type, index) -> bf16 torch._grouped_mm works there (probed)


def set_backend(name: str) -> None:
    """'auto' (default) or 'emulate'. Set it before torch.compile: the choice is baked into graphs."""
    global _BACKEND
    if name not in ("auto", "emulate"):
        raise ValueError(f"unknown FP8 backend {name!r}")
    _BACKEND = name


def device_has_fp8_matmul(device: torch.device | str) -> bool:
    """True where torch._scaled_mm runs on FP8 tensor cores: CUDA with compute capability >= 8.9.
    Cached per device index; convert_to_fp8 fills the cache before compile, so compiled code only
    reads a dict (no torch.cuda query inside a graph)."""
    if isinstance(device, str):
        device = torch.device(device)
    if device.type != "cuda":
        return False
    if device.index in _CUDA_FP8:
        return _CUDA_FP8[device.index]
    ok = torch.cuda.is_available()
    if ok:
        index = device.index if device.index is not None else torch.cuda.current_device()
        ok = torch.cuda.get_device_capability(index) >= (8, 9)
    _CUDA_FP8[device.index] = ok
    return ok


def uses_scaled_mm(device: torch.device) -> bool:
    """Which path a matmul on this device takes: True = torch._scaled_mm, False = emulation."""
    return _BACKEND == "auto" and device.type == "cuda" and device_has_fp8_matmul(device)


# -----------------------------------------------------------------------------
# Quantization


def fp8_scale(amax: torch.Tensor, fp8_max: float) -> torch.Tensor:
    """fp32 scale that maps amax onto fp8_max; amax = 0 gives a large finite scale."""
    return fp8_max / torch.clamp(amax.float(), min=AMAX_EPS)


def quantize(t: torch.Tensor, dtype: torch.dtype, dims: tuple[int, ...] | None = None):
    """Cast t to an FP8 dtype with a dynamic scale. Returns (t_fp8, inv_scale) with
    t ~= t_fp8 * inv_scale. dims=None: one scale for the tensor (0-dim inv_scale); otherwise amax
    over those dims (kept, so inv_scale broadcasts against t). Values saturate at the format's max."""
    fp8_max = E4M3_MAX if dtype == E4M3 else E5M2_MAX
    amax = t.abs().amax() if dims is None else t.abs().amax(dim=dims, keepdim=True)
    scale = fp8_scale(amax, fp8_max)
    t_fp8 = (t.float() * scale).clamp(-fp8_max, fp8_max).to(dtype)
    return t_fp8, scale.reciprocal()


# -----------------------------------------------------------------------------
# The one FP8 GEMM every path goes through


def _check_scaled_mm_rules(a: torch.Tensor, b: torch.Tensor) -> None:
    # torch._scaled_mm's CUDA rules, checked on every device (shapes and strides are static under
    # torch.compile, so these checks cost nothing at run time and never break the graph).
    if a.dim() != 2 or b.dim() != 2 or a.size(1) != b.size(0):
        raise ValueError(f"fp8 mm: bad shapes {tuple(a.shape)} @ {tuple(b.shape)}")
    if a.stride(1) != 1 or a.stride(0) != a.size(1):
        raise ValueError(f"fp8 mm: first operand must be row-major, strides {a.stride()}")
    if b.stride(0) != 1 or b.stride(1) != b.size(0):
        raise ValueError(f"fp8 mm: second operand must be column-major, strides {b.stride()}")
    m, k, n = a.size(0), a.size(1), b.size(1)
    if m % 16 or k % 16 or n % 16:
        raise ValueError(f"fp8 mm: dims must be multiples of 16, got M={m} K={k} N={n}")
    if a.dtype == E5M2 and b.dtype == E5M2:
        raise ValueError("fp8 mm: e5m2 x e5m2 is not supported by _scaled_mm")


def fp8_mm(a, b, a_inv, b_inv, out_dtype=torch.bfloat16, use_scaled_mm=False, fast_accum=False):
    """a [M,K] fp8 row-major, b [K,N] fp8 column-major, fp32 scalar inverse scales -> [M,N]."""
    _check_scaled_mm_rules(a, b)
    a_inv = a_inv.float().reshape(())
    b_inv = b_inv.float().reshape(())
    if use_scaled_mm:
        # Per-expert scales are views into one [E,1,1] tensor, 4 bytes apart: cuBLASLt refuses
        # scale pointers at such offsets (CUBLAS_STATUS_NOT_SUPPORTED), and inductor's scaled-mm
        # template cannot lower a view of a view. A copy is a 0-dim tensor of its own.
        a_inv, b_inv = a_inv.clone(), b_inv.clone()
        return torch._scaled_mm(
            a, b, scale_a=a_inv, scale_b=b_inv, out_dtype=out_dtype, use_fast_accum=fast_accum
        )
    # Emulation: the FP8 values are exact in fp32 (and in bf16); multiply them with fp32
    # accumulation like the tensor cores, then apply both scales in fp32 once, as _scaled_mm does.
    # Autocast off: it would round the fp32 operands of mm to bf16.
    with torch.autocast(a.device.type, enabled=False):
        out = torch.mm(a.float(), b.float()) * (a_inv * b_inv)
    return out.to(out_dtype)


def _grad_dtype(param_dtype: torch.dtype) -> torch.dtype:
    # weight gradients land in fp32 master weights without an extra bf16 rounding
    return torch.float32 if param_dtype == torch.float32 else torch.bfloat16


# -----------------------------------------------------------------------------
# Dense layers


class _Fp8Matmul(torch.autograd.Function):
    """out[M,N] = x[M,K] @ w[N,K].T in FP8 (x, w: e4m3 forward; grad: e5m2 backward)."""

    @staticmethod
    def forward(ctx, x, w, use_scaled_mm):
        x8, x_inv = quantize(x, E4M3)  # [M,K] row-major
        w8, w_inv = quantize(w, E4M3)  # [N,K] row-major, so w8.t() is [K,N] column-major
        out = fp8_mm(x8, w8.t(), x_inv, w_inv, torch.bfloat16, use_scaled_mm, fast_accum=True)
        # Saving the FP8 copies (not x) halves the activation memory of these layers.
        ctx.save_for_backward(x8, x_inv, w8, w_inv)
        ctx.use_scaled_mm = use_scaled_mm
        ctx.x_dtype, ctx.w_dtype = x.dtype, w.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x8, x_inv, w8, w_inv = ctx.saved_tensors
        g8, g_inv = quantize(grad_out.contiguous(), E5M2)  # [M,N]
        # grad_x[M,K] = g[M,N] @ w[N,K]: w8 as column-major [N,K]
        grad_x = fp8_mm(g8, w8.t().contiguous().t(), g_inv, w_inv, torch.bfloat16, ctx.use_scaled_mm)
        # grad_w[N,K] = g.T[N,M] @ x[M,K]: g.T row-major, x column-major
        grad_w = fp8_mm(
            g8.t().contiguous(),
            x8.t().contiguous().t(),
            g_inv,
            x_inv,
            _grad_dtype(ctx.w_dtype),
            ctx.use_scaled_mm,
        )
        return grad_x.to(ctx.x_dtype), grad_w.to(ctx.w_dtype), None


def _pad_rows(t: torch.Tensor, multiple: int = 16, dim: int = 0) -> tuple[torch.Tensor, int]:
    # Zero rows pad the token dim to a multiple of 16 (_scaled_mm's rule): they add nothing to the
    # weight gradient and their outputs are sliced away. Shapes are static, so compile is happy.
    n = t.size(dim)
    pad = (-n) % multiple
    if pad == 0:
        return t, n
    spec = [0, 0] * (t.dim() - 1 - dim) + [0, pad]
    return F.pad(t, spec), n


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear in FP8 (tensorwise scales). x [..., K], weight [N, K]; returns bf16 [..., N]."""
    lead = x.shape[:-1]
    x2, m = _pad_rows(x.reshape(-1, x.size(-1)))
    out = _Fp8Matmul.apply(x2, weight, uses_scaled_mm(x.device))
    if x2.size(0) != m:
        out = out[:m]
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.reshape(*lead, weight.size(0))


_ACTIVE = True  # False inside high_precision(): FP8 layers and expert banks run plain matmuls


def active() -> bool:
    return _ACTIVE


@contextlib.contextmanager
def high_precision() -> Iterator[None]:
    """Inside, every FP8 layer and expert bank runs its plain matmul (bf16 under autocast), as the
    fork evaluates: validation measures the weights, not FP8's rounding of them. A compiled model
    reads the switch while tracing and is guarded on it, so its first call inside compiles a graph
    of its own instead of replaying the FP8 one."""
    global _ACTIVE
    before, _ACTIVE = _ACTIVE, False
    try:
        yield
    finally:
        _ACTIVE = before


class Fp8Linear(nn.Linear):
    """nn.Linear whose matmuls run in FP8. A subclass so that everything that looks for nn.Linear
    (init, optimizer grouping, FLOPs counting) still sees it; convert_to_fp8 swaps the class of
    existing layers in place, so parameters, their init and optimizer references are untouched."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _ACTIVE:
            return F.linear(x, self.weight, self.bias)
        out = fp8_linear(x, self.weight, self.bias)
        # Outputs are bf16 (the trainer runs under bf16 autocast on GPU). A model run in plain
        # fp32 (autocast off) gets fp32 back, so FP8 layers drop into any dtype regime.
        if x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type):
            out = out.float()
        return out


# -----------------------------------------------------------------------------
# MoE experts


class _Fp8Bmm(torch.autograd.Function):
    """out[E,C,N] = x[E,C,K] @ w[E,K,N] per expert, fixed-capacity buffers (C % 16 == 0)."""

    @staticmethod
    def forward(ctx, x, w, use_scaled_mm):
        x8, x_inv = quantize(x, E4M3, dims=(1, 2))  # one scale per expert: x_inv [E,1,1]
        w8, w_inv = quantize(w, E4M3, dims=(1, 2))  # w_inv [E,1,1]
        w8_cm = w8.transpose(1, 2).contiguous()  # [E,N,K]: w8_cm[e].t() is [K,N] column-major
        outs = [
            fp8_mm(x8[e], w8_cm[e].t(), x_inv[e], w_inv[e], torch.bfloat16, use_scaled_mm, True)
            for e in range(x.size(0))
        ]
        ctx.save_for_backward(x8, x_inv, w8, w_inv)
        ctx.use_scaled_mm = use_scaled_mm
        ctx.x_dtype, ctx.w_dtype = x.dtype, w.dtype
        return torch.stack(outs)

    @staticmethod
    def backward(ctx, grad_out):
        x8, x_inv, w8, w_inv = ctx.saved_tensors
        g8, g_inv = quantize(grad_out.contiguous(), E5M2, dims=(1, 2))  # [E,C,N], g_inv [E,1,1]
        g8_t = g8.transpose(1, 2).contiguous()  # [E,N,C]: g8_t[e].t() is [C,N] column-major
        x8_t = x8.transpose(1, 2).contiguous()  # [E,K,C]: row-major x[e].T
        gw_dtype = _grad_dtype(ctx.w_dtype)
        grad_x, grad_w = [], []
        for e in range(x8.size(0)):
            # grad_x[e][C,K] = g[e][C,N] @ w[e].T[N,K]; w8[e] is [K,N] row-major, so .t() is column-major
            grad_x.append(fp8_mm(g8[e], w8[e].t(), g_inv[e], w_inv[e], torch.bfloat16, ctx.use_scaled_mm))
            # grad_w[e][K,N] = x[e].T[K,C] @ g[e][C,N]
            grad_w.append(fp8_mm(x8_t[e], g8_t[e].t(), x_inv[e], g_inv[e], gw_dtype, ctx.use_scaled_mm))
        return torch.stack(grad_x).to(ctx.x_dtype), torch.stack(grad_w).to(ctx.w_dtype), None


def fp8_bmm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Expert matmul on fixed-capacity buffers in FP8: x [E,C,K] @ w [E,K,N] -> bf16 [E,C,N].
    Eager: one _scaled_mm per expert, with one scale per expert; the quantization of all experts
    is one pass over each buffer. Compiled on an FP8 GPU: the grouped path (fp8_grouped_mm) with
    the E buffers as its groups, because inductor (torch 2.11) fails to lower per-expert
    _scaled_mm calls; measured on an H200, the compiled d12 FP8 cap-1.0 leg then runs with 0
    recompiles. C is zero-padded to a multiple of 16 when it is not one (moe.py already rounds
    capacities up to 16)."""
    x, c = _pad_rows(x, dim=1)
    if torch.compiler.is_compiling() and uses_scaled_mm(x.device) and _grouped_fp8_ok(x.device):
        # Inductor cannot lower E _scaled_mm calls whose scales are slices of one tensor; a grouped
        # matmul whose groups are the E fixed-size buffers is the same product and lowers.
        n_exp, cap, k = x.shape
        offs = torch.arange(1, n_exp + 1, device=x.device, dtype=torch.int32) * cap
        out = fp8_grouped_mm(x.reshape(n_exp * cap, k), w, offs).view(n_exp, cap, w.size(2))
    else:
        out = _Fp8Bmm.apply(x, w, uses_scaled_mm(x.device))
    return out if out.size(1) == c else out[:, :c]


def _dequant(t8: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (t8.float() * inv).to(dtype)


def _row_expert(offs: torch.Tensor, m: int) -> torch.Tensor:
    """Expert of each of the m rows: e with offs[e-1] <= row < offs[e] (empty groups skipped)."""
    rows = torch.arange(m, device=offs.device, dtype=offs.dtype)
    return torch.searchsorted(offs, rows, right=True).clamp(max=offs.numel() - 1)


def quantize_grouped(t: torch.Tensor, dtype: torch.dtype, row_expert: torch.Tensor, n_experts: int):
    """quantize() with one scale per expert for a [M, K] tensor whose rows are grouped by expert:
    the row maxima are scatter-maxed into E bins on the device. Returns (t_fp8, row_inv [M, 1])."""
    fp8_max = E4M3_MAX if dtype == E4M3 else E5M2_MAX
    row_amax = t.abs().amax(dim=1).float()
    amax = torch.zeros(n_experts, device=t.device, dtype=torch.float32)
    amax = amax.scatter_reduce(0, row_expert, row_amax, reduce="amax")
    scale = fp8_scale(amax, fp8_max)[row_expert].unsqueeze(1)  # [M, 1]
    t_fp8 = (t.float() * scale).clamp(-fp8_max, fp8_max).to(dtype)
    return t_fp8, scale.reciprocal()


def _grouped_scaled_mm_fwd(x8, x_row_inv, w8, w_inv, offs):
    # torch._scaled_grouped_mm: e4m3 operands, rowwise fp32 scales (one per row of x, one per
    # output column of each expert's weight), bf16 out; x row-major, each w[e] column-major.
    e, _, n = w8.shape
    b = w8.transpose(1, 2).contiguous().transpose(1, 2)
    scale_a = x_row_inv.reshape(-1).contiguous()
    scale_b = w_inv.float().reshape(e, 1).expand(e, n).contiguous()
    return torch._scaled_grouped_mm(x8, b, scale_a, scale_b, offs=offs, out_dtype=torch.bfloat16)


def _grouped_fp8_ok(device: torch.device) -> bool:
    if not uses_scaled_mm(device) or not hasattr(torch, "_scaled_grouped_mm"):
        return False
    return _GROUPED_FP8.get(device.index if device.index is not None else torch.cuda.current_device(), False)


def grouped_mm_native(device: torch.device) -> bool:
    """Whether the dropless path can use torch._grouped_mm (bf16) here: sm90+ GPUs with a recent
    torch, and CPU. Probed once by probe_grouped(); an unprobed device is assumed to have it."""
    return _GROUPED_MM.get((device.type, device.index), True)


def _gmm(a, b, offs, row_expert, native):
    """Grouped a[M,K] @ b[e][K,N] -> [M,N]. Without _grouped_mm: every expert on every row, each
    row keeping its own expert's result (E x the FLOPs, static shapes, exact)."""
    if native:
        return torch._grouped_mm(a, b, offs=offs)
    out = a.new_zeros(a.size(0), b.size(2))
    for e in range(b.size(0)):
        out = torch.where((row_expert == e)[:, None], a @ b[e], out)
    return out


def _gmm_wgrad(a, g, offs, row_expert, n_experts, native):
    """Per expert a_e.T @ g_e over its rows -> [E,K,N]."""
    if native:
        return torch._grouped_mm(a.t(), g, offs=offs)
    return torch.stack([(a * (row_expert == e)[:, None]).t() @ g for e in range(n_experts)])


class _Fp8GroupedMm(torch.autograd.Function):
    """Dropless experts: x [M,K] (rows grouped by expert) @ w[e] [K,N] -> [M,N]."""

    @staticmethod
    def forward(ctx, x, w, offs, grouped_fp8, native):
        n_exp = w.size(0)
        row_expert = _row_expert(offs, x.size(0))
        x8, x_inv = quantize_grouped(x, E4M3, row_expert, n_exp)  # x_inv [M,1]
        w8, w_inv = quantize(w, E4M3, dims=(1, 2))  # w_inv [E,1,1]
        if grouped_fp8:
            out = _grouped_scaled_mm_fwd(x8, x_inv, w8, w_inv, offs)
        else:
            # Grouped GEMM on the dequantized FP8 values, in bf16 (_grouped_mm's dtype under
            # compile and on GPU): FP8 numerics, the speed of the bf16 kernel.
            bf16 = torch.bfloat16
            out = _gmm(_dequant(x8, x_inv, bf16), _dequant(w8, w_inv, bf16), offs, row_expert, native)
        ctx.save_for_backward(x8, x_inv, w8, w_inv, offs, row_expert)
        ctx.x_dtype, ctx.w_dtype, ctx.native = x.dtype, w.dtype, native
        return out.to(torch.bfloat16)

    @staticmethod
    def backward(ctx, grad_out):
        # _scaled_grouped_mm takes e4m3 only, so the e5m2 gradient matmuls always run as grouped
        # GEMMs on dequantized FP8 values (no host sync: offs stays on the device).
        x8, x_inv, w8, w_inv, offs, row_expert = ctx.saved_tensors
        g8, g_inv = quantize_grouped(grad_out.contiguous(), E5M2, row_expert, w8.size(0))
        bf16 = torch.bfloat16
        g, w, x = _dequant(g8, g_inv, bf16), _dequant(w8, w_inv, bf16), _dequant(x8, x_inv, bf16)
        grad_x = _gmm(g, w.transpose(1, 2), offs, row_expert, ctx.native)  # [M,N] @ w[e].T -> [M,K]
        grad_w = _gmm_wgrad(x, g, offs, row_expert, w.size(0), ctx.native)  # x_e.T @ g_e -> [E,K,N]
        return grad_x.to(ctx.x_dtype), grad_w.to(ctx.w_dtype), None, None, None


def fp8_grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Dropless expert matmul in FP8: x [M,K] with rows grouped by expert, w [E,K,N], offs int32
    cumulative end row of each expert's group [E] (torch._grouped_mm semantics) -> bf16 [M,N].
    Forward on torch._scaled_grouped_mm where the GPU has it (probed once, see probe_grouped);
    otherwise, and for the backward, grouped GEMMs on the dequantized FP8 values."""
    if w.size(1) % 16 or w.size(2) % 16:
        raise ValueError(f"fp8 grouped mm: K and N must be multiples of 16, got {tuple(w.shape[1:])}")
    return _Fp8GroupedMm.apply(x, w, offs, _grouped_fp8_ok(x.device), grouped_mm_native(x.device))


def probe_grouped(device: torch.device) -> bool:
    """Probe the grouped kernels once, outside compiled code (convert_to_fp8 calls it): whether bf16
    torch._grouped_mm runs here (both the 2d x 3d and the 2d x 2d form), and whether
    torch._scaled_grouped_mm runs and matches the emulation on a tiny problem (its rules vary
    across torch versions and GPUs). Returns the latter: the FP8 grouped forward is used only then."""
    device = torch.device(device)
    if (device.type, device.index) not in _GROUPED_MM:
        ok = hasattr(torch, "_grouped_mm")
        if ok:
            try:
                a = torch.ones(48, 32, device=device, dtype=torch.bfloat16)
                b = torch.ones(2, 32, 16, device=device, dtype=torch.bfloat16)
                offs = torch.tensor([24, 48], device=device, dtype=torch.int32)
                ok = bool((torch._grouped_mm(a, b, offs=offs) == 32).all().item())
                g = torch.ones(48, 16, device=device, dtype=torch.bfloat16)
                ok = ok and bool((torch._grouped_mm(a.t(), g, offs=offs) == 24).all().item())
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                ok = False
        _GROUPED_MM[(device.type, device.index)] = ok
    if not uses_scaled_mm(device) or not hasattr(torch, "_scaled_grouped_mm"):
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _GROUPED_FP8:
        ok = False
        try:
            g = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(80, 64, device=device, generator=g, dtype=torch.bfloat16)
            w = torch.randn(3, 64, 32, device=device, generator=g, dtype=torch.bfloat16)
            offs = torch.tensor([16, 16, 80], device=device, dtype=torch.int32)  # one empty group
            x8, x_inv = quantize_grouped(x, E4M3, _row_expert(offs, 80), 3)
            w8, w_inv = quantize(w, E4M3, dims=(1, 2))
            got = _grouped_scaled_mm_fwd(x8, x_inv, w8, w_inv, offs).float()
            ref = torch._grouped_mm(
                _dequant(x8, x_inv, torch.bfloat16), _dequant(w8, w_inv, torch.bfloat16), offs=offs
            ).float()
            ok = bool(((got - ref).norm() / ref.norm()).item() < 1e-2)
        except (RuntimeError, TypeError, NotImplementedError, ValueError):
            ok = False
        _GROUPED_FP8[index] = ok
    return _GROUPED_FP8[index]


# -----------------------------------------------------------------------------
# Model conversion

MIN_DIM = 128  # below this the casts cost more than FP8 saves (and routers are this small)
ROUTER_NAMES = ("router", "gate")  # MoE routing stays in high precision: small, and it picks experts


def _eligible(*dims: int) -> bool:
    return all(d % 16 == 0 and d >= MIN_DIM for d in dims)


def _kind(name: str) -> tuple[str, str]:
    """'transformer.h.3.attn.c_q' -> ('attn', 'c_q'); 'lm_head' -> ('lm_head', '')."""
    parts = [p for p in name.split(".") if not p.isdigit()]
    return (parts[-2], parts[-1]) if len(parts) >= 2 else (parts[-1], "")


def _expert_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # The MoE expert banks announce themselves with a boolean `fp8` attribute (moe.py).
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(getattr(m, "fp8", None), bool) and not isinstance(m, nn.Linear)
    ]


def convert_to_fp8(model: nn.Module, include_experts: bool) -> dict:
    """Swap the model's eligible nn.Linear layers for Fp8Linear (in place, parameters untouched)
    and, with include_experts, switch the MoE expert banks to FP8 (experts.fp8 = True).

    Eligible: in and out features multiples of 16 (_scaled_mm's rule) and at least 128; the
    lm_head included, as the fork converts it (its vocab is padded to a multiple of 64).
    Kept in high precision on purpose:
    - the MoE router: a tiny [d, n_experts] matmul whose logits choose the experts; FP8 noise
      there flips top-k choices and saves nothing;
    - embeddings: a lookup, not a matmul (not nn.Linear).
    Call it before torch.compile / DDP. Returns counts, the kinds converted and a "log_line"."""
    device = next(model.parameters()).device
    kinds: dict[str, list[str]] = {}  # family -> leaf names, in order
    counts: dict[str, int] = {}
    n_linear, skipped, kept = 0, [], []
    for name, mod in list(model.named_modules()):
        if type(mod) is not nn.Linear:  # exact type: Fp8Linear layers are already converted
            continue
        family, leaf = _kind(name)
        if any(part in ROUTER_NAMES for part in name.split(".")):
            kept.append("router")
        elif not _eligible(mod.in_features, mod.out_features):
            skipped.append(name)
        else:
            mod.__class__ = Fp8Linear
            n_linear += 1
            counts[family] = counts.get(family, 0) + 1
            leaves = kinds.setdefault(family, [])
            if leaf and leaf not in leaves:
                leaves.append(leaf)

    n_expert_mats, n_expert_layers, experts_per_layer, expert_leaves = 0, 0, 0, []
    for name, mod in _expert_modules(model):
        banks = [(pn, p) for pn, p in mod.named_parameters(recurse=False) if p.dim() == 3]
        if not include_experts:
            continue
        if not banks or not all(_eligible(p.size(1), p.size(2)) for _, p in banks):
            skipped.append(name)
            continue
        mod.fp8 = True
        n_expert_layers += 1
        experts_per_layer = banks[0][1].size(0)
        n_expert_mats += sum(p.size(0) for _, p in banks)
        for pn, _ in banks:
            if pn not in expert_leaves:
                expert_leaves.append(pn)

    grouped = probe_grouped(device) if include_experts and n_expert_layers else False
    native = grouped_mm_native(device)
    emulated = not uses_scaled_mm(device)
    parts = [" ".join(filter(None, (fam, "/".join(kinds[fam]), f"x{counts[fam]}"))) for fam in counts]
    if n_expert_layers:
        parts.append(
            f"experts {'/'.join(expert_leaves)} x{n_expert_mats} "
            f"({n_expert_layers} MoE layers x {experts_per_layer} experts, per-expert scales)"
        )
    kept_txt = ", ".join(f"{k} x{kept.count(k)}" if kept.count(k) > 1 else k for k in dict.fromkeys(kept))
    scope = "MoE experts included" if include_experts else "MoE experts in bf16"
    line = (
        f"✓ FP8 training enabled (tensorwise scaling, {scope}) - converted {n_linear + n_expert_mats} "
        f"layers, skipped {len(skipped)} (dims not divisible by 16 or < {MIN_DIM})"
        f" | converted: {', '.join(parts) or 'none'}"
    )
    if kept_txt:
        line += f" | kept in high precision: {kept_txt}"
    if emulated:
        why = "forced" if _BACKEND == "emulate" else "needs CUDA compute capability >= 8.9"
        line += f" | FP8 EMULATED on {device.type} (no FP8 matmul: {why}): FP8 numerics, no speed-up"
    elif n_expert_layers:
        dropless = (
            "_scaled_grouped_mm"
            if grouped
            else "grouped bf16 GEMM on FP8 values"
            if native
            else "per-expert masked GEMMs on FP8 values"
        )
        fixed = (
            "_scaled_grouped_mm compiled, _scaled_mm per expert eager" if grouped else "_scaled_mm per expert"
        )
        line += f" | experts: {fixed} (fixed capacity), {dropless} (dropless)"
    return {
        "converted": n_linear + n_expert_mats,
        "linear": n_linear,
        "linear_kinds": {fam: {"count": counts[fam], "names": kinds[fam]} for fam in counts},
        "expert_matrices": n_expert_mats,
        "expert_layers": n_expert_layers,
        "skipped": skipped,
        "kept": kept,
        "emulated": emulated,
        "grouped_fp8": grouped,
        "grouped_mm_native": native,
        "log_line": line,
    }
