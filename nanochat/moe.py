"""
Mixture-of-Experts feed-forward block: router, Switch-style balance loss, and two dispatch paths.

- dropless (`capacity_factor == 0`): every (token, expert) assignment is computed. Assignments are
  sorted by expert and run through one grouped matmul per weight (`torch._grouped_mm`).
- fixed capacity (`capacity_factor > 0`): each expert gets C slots,
  C = ceil(cf * T * k / E) rounded up to a multiple of 16. Slots are assigned on the device with a
  cumsum over one-hot expert choices, so every shape is static and nothing syncs with the host:
  the block compiles with fullgraph=True, dynamic=False and never recompiles when the routing
  changes. Assignments past capacity are dropped (their expert output is zero; the residual
  stream carries the token) and counted.

Which assignments a full expert keeps (`drop_order`), each expert filling its slots in order:
- "token" (the default, the fork's rule): token order, each token's choices together (token 0's
  first and second choice, then token 1's, ...; tokens in row-major order over the batch). A
  full expert drops the choices of the batch's last tokens, first choices included.
- "choice": every token's first choice before any second choice (then token order), so a first
  choice is dropped only when an expert's first choices alone overflow it.
The trainer's legs use "token", so a capacity ablation measures what the fork's code does.

Weight layouts (nanochat/fp8.py reads these):
    MoE.router.weight   [E, D]     logits = x @ router.weight.T, always in fp32
    Experts.w_fc        [E, D, H]  h = x @ w_fc[e]                  (H = expert_hidden_mult * D)
    Experts.w_proj      [E, H, D]  y = relu(h)^2 @ w_proj[e]
Both expert matmuls are "activation @ weight" with a row-major [K, N] weight per expert, and go
through the two module-level call sites below, which take the same shapes with or without FP8:
    expert_bmm(x [E, C, K], w [E, K, N])                    -> [E, C, N]   (fixed capacity)
    expert_grouped_mm(x [M, K], w [E, K, N], offs int32 [E]) -> [M, N]     (dropless)
        rows offs[e-1]:offs[e] of x belong to expert e (offs[-1] == M; empty groups allowed).
With `Experts.fp8 = True` they call nanochat.fp8.fp8_bmm / fp8_grouped_mm instead.
Activations reach the experts already in the autocast dtype (bf16 on GPU): the gathers then move
half the bytes, and grouped_mm, which autocast does not cover, gets matching dtypes.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# the activation, and the two expert matmul call sites (FP8 swaps them)


def relu_squared(h: torch.Tensor) -> torch.Tensor:
    """ReLU(h)^2, the activation of every MLP here (dense and experts), in h's dtype. Not
    `.square()`: that is pow(h, 2), which CUDA autocast runs in fp32, so a bf16 h would come back
    fp32 and the next matmul would read (and autograd keep) twice the bytes; grouped_mm, which
    autocast does not cover, would even run its fp32 fallback (a host sync per call)."""
    h = F.relu(h)
    return h * h


def expert_bmm(x: torch.Tensor, w: torch.Tensor, fp8: bool = False) -> torch.Tensor:
    """[E, C, K] @ [E, K, N] -> [E, C, N], batched over experts."""
    if fp8:
        from nanochat.fp8 import active, fp8_bmm

        if active():  # off inside fp8.high_precision()
            return fp8_bmm(x, w)
    return torch.bmm(x, w.to(x.dtype))


def expert_grouped_mm(
    x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, fp8: bool = False
) -> torch.Tensor:
    """[M, K] rows grouped by expert (int32 cumulative ends `offs`) @ [E, K, N] -> [M, N]."""
    if fp8:
        from nanochat.fp8 import active, fp8_grouped_mm

        if active():  # off inside fp8.high_precision()
            return fp8_grouped_mm(x, w, offs)
    # grouped_mm is outside autocast's op lists, so cast here: both operands in the compute dtype
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    w = w.to(x.dtype)
    if x.dtype == torch.bfloat16 or not torch.compiler.is_compiling():
        return torch._grouped_mm(x, w, offs=offs)
    # The op's meta kernel, which torch.compile traces with, takes bf16 only, while the CPU kernel
    # also runs fp32 (the trainer's CPU runs): there, the same kernel as an opaque custom op.
    return grouped_mm_any_dtype(x, w, offs)


def _fp8_active() -> bool:
    """FP8 is on for the expert banks that have it (off inside nanochat.fp8.high_precision())."""
    from nanochat.fp8 import active

    return active()


@torch.library.custom_op("nanochat::grouped_mm", mutates_args=())
def grouped_mm_any_dtype(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm as a custom op: torch.compile keeps it in the graph as one call whatever
    the dtype. The 2d x 3d form ([M, K] @ [E, K, N] -> [M, N]) and, for its weight gradient, the
    2d x 2d form ([K, M] @ [M, N] -> [E, K, N], one product per group of M)."""
    return torch._grouped_mm(a, b, offs=offs)


@grouped_mm_any_dtype.register_fake
def _(a, b, offs):
    if b.dim() == 3:
        return a.new_empty(a.size(0), b.size(2))
    return a.new_empty(offs.size(0), a.size(0), b.size(1))


def _grouped_mm_setup(ctx, inputs, output):
    a, b, offs = inputs
    ctx.save_for_backward(a, b, offs)


def _grouped_mm_backward(ctx, grad):
    a, b, offs = ctx.saved_tensors  # the 2d x 3d form: a [M, K] grouped rows, b [E, K, N]
    grad_a = grouped_mm_any_dtype(grad, b.transpose(1, 2), offs) if ctx.needs_input_grad[0] else None
    grad_b = grouped_mm_any_dtype(a.t(), grad, offs) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b, None


grouped_mm_any_dtype.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


# Whether torch._grouped_mm runs (forward and backward) for a (device type, dtype, K, N): it needs
# a recent torch and 16-byte aligned rows; on CUDA, sm90+ and bf16, the one case with a kernel of
# its own: for any other dtype ATen loops over the groups, reading their offsets on the host (a
# sync per call), so on CUDA only bf16 counts. Probed once, eagerly (the trainer probes before
# compiling; an eager forward probes on first use);
# where it does not run, dropless falls back to the capacity path with C = T (exact, but E/k times
# the expert FLOPs); the trainer says so in its log.
_GROUPED_MM_OK: dict[tuple, bool] = {}


def probe_grouped_mm(device: torch.device, dtype: torch.dtype, k: int, n: int) -> bool:
    key = (torch.device(device).type, dtype, k, n)
    if key not in _GROUPED_MM_OK:
        ok = hasattr(torch, "_grouped_mm") and (key[0] != "cuda" or dtype == torch.bfloat16)
        if ok:
            try:
                with torch.inference_mode(False), torch.enable_grad():
                    x = torch.randn(32, k, device=device, dtype=dtype, requires_grad=True)
                    w = torch.randn(2, k, n, device=device, dtype=dtype, requires_grad=True)
                    offs = torch.tensor([16, 32], device=device, dtype=torch.int32)
                    g = torch.ones(32, n, device=device, dtype=dtype)
                    torch._grouped_mm(x, w, offs=offs).backward(g)
            except (RuntimeError, NotImplementedError):
                ok = False
        _GROUPED_MM_OK[key] = ok
    return _GROUPED_MM_OK[key]


def grouped_mm_usable(device: torch.device, dtype: torch.dtype, k: int, n: int) -> bool:
    return _GROUPED_MM_OK.get((torch.device(device).type, dtype, k, n), False)


# ---------------------------------------------------------------------------------------------
# routing statistics


def balance_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Switch-style load balance on the fork's scale: k (top-k) at perfect balance, up to E when
    every token routes to the same experts with all its probability on them.

    probs: [T, E] router probabilities; counts: [E] routed assignments per expert (all k choices).
    E * sum_i f_i * P_i with f_i = counts_i / T (the f_i sum to k) and P_i = mean_t probs[t, i].
    Gradients flow through P only (f is a count), as in Switch Transformer.
    """
    n_tokens, n_experts = probs.shape
    f = counts.float() / max(n_tokens, 1)
    p = probs.float().mean(0)
    return n_experts * (f * p).sum()


def expert_capacity(n_tokens: int, topk: int, n_experts: int, capacity_factor: float | Fraction) -> int:
    """C = ceil(cf * T * k / E), rounded up to a multiple of 16 (tensor-core friendly), and no more
    than T rounded up (an expert is chosen at most once per token, so T slots never drop).
    Integer arithmetic only (cf as a fraction), so under torch.compile(dynamic=True) the capacity is
    a plain integer expression of T."""
    cf = capacity_factor if isinstance(capacity_factor, Fraction) else _as_fraction(capacity_factor)
    c = -((-cf.numerator * n_tokens * topk) // (cf.denominator * n_experts))  # ceil division
    c = min(c, n_tokens)
    return max(16, (c + 15) // 16 * 16)


DROP_ORDERS = ("token", "choice")  # which assignments a full expert keeps (module docstring)


def _as_fraction(x: float) -> Fraction:
    return Fraction(x).limit_denominator(1_000_000)


# ---------------------------------------------------------------------------------------------
# modules


class Experts(nn.Module):
    """E ReLU^2 MLPs as two 3D weights (one parameter per matrix kind, not a list of modules)."""

    fp8: bool = False

    def __init__(self, n_experts: int, dim: int, hidden: int):
        super().__init__()
        self.n_experts, self.dim, self.hidden = n_experts, dim, hidden
        self.w_fc = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.w_proj = nn.Parameter(torch.empty(n_experts, hidden, dim))

    def forward_capacity(self, x: torch.Tensor) -> torch.Tensor:
        """x: [E, C, D] -> [E, C, D]."""
        h = relu_squared(expert_bmm(x, self.w_fc, self.fp8))
        return expert_bmm(h, self.w_proj, self.fp8)

    def forward_grouped(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """x: [M, D] sorted by expert, offs: int32 [E] cumulative group ends -> [M, D]."""
        h = relu_squared(expert_grouped_mm(x, self.w_fc, offs, self.fp8))
        return expert_grouped_mm(h, self.w_proj, offs, self.fp8)


class MoE(nn.Module):
    def __init__(
        self,
        dim: int,
        n_experts: int,
        topk: int,
        hidden_mult: float,
        capacity_factor: float = 0.0,
        balance_coeff: float = 0.0,
        drop_order: str = "token",
    ):
        super().__init__()
        if not 1 <= topk <= n_experts:
            raise ValueError(f"expert topk {topk} must be in 1..n_experts ({n_experts})")
        if capacity_factor < 0:
            raise ValueError(f"capacity factor {capacity_factor} must be >= 0")
        if drop_order not in DROP_ORDERS:
            raise ValueError(f"drop order {drop_order!r} must be one of {', '.join(DROP_ORDERS)}")
        self.drop_order = drop_order
        self.dim, self.n_experts, self.topk = dim, n_experts, topk
        self.capacity_factor = float(capacity_factor)
        # fixed at construction as Python constants: compile treats them as such (no float symbols)
        self.is_dropless = capacity_factor == 0
        self._cf = _as_fraction(capacity_factor)
        self.balance_coeff = float(balance_coeff)
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = Experts(n_experts, dim, int(hidden_mult * dim))

    @property
    def dropless(self) -> bool:
        return self.is_dropless

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: [B, T, D] -> (y [B, T, D], aux). aux holds `aux_loss` (balance_coeff * bal, to add
        to the training loss), and detached statistics: `bal` (balance_loss: k at perfect
        balance), `load` ([E] routed assignments per expert), `dropped` (assignments past
        capacity) and `assigned` (T * k)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n_tok, k, n_exp = x.shape[0], self.topk, self.n_experts

        # router in fp32, outside autocast: top-k choices are sensitive to rounding
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = _RouterLogits.apply(x.float(), self.router.weight.float())
        probs = logits.softmax(dim=-1)
        gates, choice = probs.topk(k, dim=-1)  # [T, k], sorted: column 0 is the first choice
        gates = gates / gates.sum(dim=-1, keepdim=True)

        # Assignments indexed choice-major: all first choices (token order), then all second
        # choices; assignment a = j * T + t is token t's j-th choice.
        expert_of = choice.t().reshape(-1)  # [k*T]
        assignment = torch.arange(k * n_tok, device=x.device)

        # activations travel in the compute dtype (bf16 under autocast)
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))

        if self.dropless and not torch.compiler.is_compiling():
            probe_grouped_mm(x.device, x.dtype, self.dim, self.experts.hidden)  # once per kind; eager
        experts_fp8 = self.experts.fp8 and _fp8_active()
        use_grouped = self.dropless and (
            experts_fp8 or grouped_mm_usable(x.device, x.dtype, self.dim, self.experts.hidden)
        )
        if use_grouped:
            y, counts, dropped = self._dropless(x, expert_of, gates, assignment)
        else:
            if self.dropless:
                cap = expert_capacity(n_tok, k, n_exp, Fraction(n_exp, k))  # C = T: exact, no drops
            else:
                cap = expert_capacity(n_tok, k, n_exp, self._cf)
            y, counts, dropped = self._capacity(x, expert_of, gates, assignment, cap)

        bal = balance_loss(probs, counts)
        aux = {
            "aux_loss": self.balance_coeff * bal,
            "bal": bal.detach(),
            "load": counts.detach().float(),
            "dropped": dropped.detach().float(),
            "assigned": torch.full((), float(n_tok * k), device=x.device),
        }
        return y.view(shape), aux

    def _capacity(self, x, expert_of, gates, assignment, cap: int):
        """Fixed capacity: every expert gets `cap` slots; static shapes, no host sync."""
        n_tok, dim = x.shape
        n_exp, k = self.n_experts, self.topk
        # the queue every expert fills its slots from, in drop_order (see the module docstring)
        token_major = self.drop_order == "token"
        queue = expert_of.view(k, n_tok).t().reshape(-1) if token_major else expert_of
        # position of each assignment within its expert's queue, from a cumsum of one-hot choices
        # (a comparison, not F.one_hot: eager one_hot validates its input with a host sync on GPU)
        onehot = (queue[:, None] == torch.arange(n_exp, device=x.device)).to(torch.int32)  # [kT, E]
        cums = onehot.cumsum(dim=0, dtype=torch.int32)
        pos = cums.gather(1, queue[:, None]).squeeze(1) - 1  # [kT], in the queue's order
        if token_major:
            pos = pos.view(n_tok, k).t().reshape(-1)  # back to choice-major: a = j * T + t
        counts = cums[-1]  # [E] routed assignments per expert
        keep = pos < cap
        dropped = (~keep).sum()
        n_slots = n_exp * cap
        slot = expert_of * cap + pos
        # inverse map slot -> assignment (its choice-major index a = j * T + t):
        # dropped assignments write to a dummy slot past the end; empty slots keep a = k * T, no
        # assignment. They read token 0 (a % T): computed, never read back, and their gradient is
        # zero, so there is no padded buffer to zero-fill (no memset per forward).
        n_assign = k * n_tok
        slot_assign = torch.full((n_slots + 1,), n_assign, dtype=torch.long, device=x.device)
        slot_assign = slot_assign.scatter(0, torch.where(keep, slot, n_slots), assignment)[:n_slots]
        slot_token = slot_assign % n_tok
        keep = keep.view(k, n_tok).t()  # [T, k] from here on: token t's j-th choice
        if n_slots >= k * n_tok:
            # Enough slots in total (cf >= 1): if anything was dropped, some expert has an empty
            # slot, whose gradient is exactly zero; point dropped choices there, and the dispatch
            # backward needs no mask. The least loaded expert's first free slot is one.
            fewest, least = counts.min(dim=0)
            spare = least * cap + fewest.clamp(max=cap - 1)
            slot_of = torch.where(keep, slot.view(k, n_tok).t(), spare)
            mask = None
        else:
            slot_of = torch.where(keep, slot.view(k, n_tok).t(), 0)  # any valid slot, masked out
            mask = keep.contiguous()
        slot_of = slot_of.contiguous()
        xb = _Dispatch.apply(x, slot_token, slot_of, mask)
        yb = self.experts.forward_capacity(xb.view(n_exp, cap, dim)).view(n_slots, dim)
        # combine: y[t] = sum_j gate_j * expert_out; a dropped assignment has weight zero
        y = _Combine.apply(yb, gates * keep, slot_of, slot_token, slot_assign)
        return y, counts, dropped

    def _dropless(self, x, expert_of, gates, assignment):
        """Dropless: sort assignments by expert, one grouped matmul per weight."""
        n_tok, dim = x.shape
        k = self.topk
        order = torch.argsort(expert_of, stable=True)  # sorted position -> assignment
        tok_sorted = order % n_tok
        rank_of = torch.empty_like(order).scatter(0, order, assignment)  # assignment -> sorted position
        # assignments per expert as a sum of comparisons: a plain reduction (a scatter_add into E
        # bins would be kT atomic adds on a handful of addresses on GPU)
        experts = torch.arange(self.n_experts, device=x.device)
        counts = (expert_of[:, None] == experts).sum(0, dtype=torch.int32)
        offs = counts.cumsum(0, dtype=torch.int32)
        slot_of = rank_of.view(k, n_tok).t().contiguous()  # [T, k]
        xs = _Dispatch.apply(x, tok_sorted, slot_of, None)  # [kT, D]
        ys = self.experts.forward_grouped(xs, offs)
        y = _Combine.apply(ys, gates, slot_of, tok_sorted, order)
        return y, counts, torch.zeros((), device=x.device)


# ---------------------------------------------------------------------------------------------
# router, dispatch and combine
#
# The maps between tokens and expert slots, both ways, without a scatter-add: each token sits in at
# most k slots and each slot holds at most one token, so the transpose of a gather is again a
# gather plus a sum over the k choices. No atomics on GPU, no zero fills, deterministic.
#   slot_token [S]      token read by each slot (empty slots: any token; their gradient is zero)
#   slot_assign [S]     assignment held by each slot, j * T + t (empty slots: k * T)
#   slot_of    [T, k]   slot of token t's j-th choice (a valid index even where dropped)
#   keep       [T, k]   choice j of token t has a slot (None: all do)
# Some pieces are written twice: eager, as single kernels that make one pass each (embedding_bag
# for the k-choice sums, bmm for per-row dot products, a matmul for the router's input gradient);
# under torch.compile, as plain indexing, products and small sums, which the compiler fuses into
# its neighbours' loops (the dispatch's k-choice gradient sum, the router's input gradient and
# the cast back to fp32 become one pass over dx; the combine merges into the residual add after
# it), where those kernels would be opaque calls, a pass each.


class _RouterLogits(torch.autograd.Function):
    """logits = x @ w.T (the router; x [T, D] and w [E, D], both fp32). The input gradient
    g @ w sums over only E experts: compiled, as a sum of E products per element."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return F.linear(x, w)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        dx = (g.unsqueeze(-1) * w).sum(1) if torch.compiler.is_compiling() else g @ w
        return dx, g.t() @ x


def _gather_sum(rows: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """out[t] = sum_j weights[t, j] * rows[idx[t, j]] (weights None: all ones). Eager, one
    embedding_bag: reads the k rows and writes one, with no [T, k, D] in between; compiled, the
    same as indexing and a sum, which becomes k loads per output element."""
    if torch.compiler.is_compiling():
        picked = rows[idx]  # [T, k, D], never materialized by the compiler
        if weights is not None:
            picked = picked * weights.unsqueeze(-1).to(rows.dtype)
        return picked.sum(1)
    w = None if weights is None else weights.to(rows.dtype)
    return F.embedding_bag(idx, rows, per_sample_weights=w, mode="sum")


class _Dispatch(torch.autograd.Function):
    """xb[s] = x[slot_token[s]]; backward: dx[t] = sum_j keep[t, j] * dxb[slot_of[t, j]]."""

    @staticmethod
    def forward(ctx, x, slot_token, slot_of, keep):
        ctx.save_for_backward(slot_of, keep)
        return F.embedding(slot_token, x)  # a row gather; on CPU faster than index_select

    @staticmethod
    def backward(ctx, dxb):
        slot_of, keep = ctx.saved_tensors
        return _gather_sum(dxb, slot_of, keep), None, None, None


class _Combine(torch.autograd.Function):
    """y[t] = sum_j w[t, j] * yb[slot_of[t, j]]; w is zero where a choice was dropped."""

    @staticmethod
    def forward(ctx, yb, w, slot_of, slot_token, slot_assign):
        # each slot's weight, gathered by its assignment (zero for an empty slot)
        w_slot = torch.cat([w.t().reshape(-1), w.new_zeros(1)])[slot_assign]
        ctx.save_for_backward(yb, w_slot, slot_of, slot_token)
        ctx.w_dtype = w.dtype
        return _gather_sum(yb, slot_of, w)

    @staticmethod
    def backward(ctx, dy):
        yb, w_slot, slot_of, slot_token = ctx.saved_tensors
        dy_slot = F.embedding(slot_token, dy)  # the output gradient of each slot's token
        dw = None
        if ctx.needs_input_grad[1]:
            # dL/dw[t, j] = <yb[slot], dy[t]>, computed per slot (the slot of assignment (t, j)
            # where kept; elsewhere w is 0 and so is this gradient's use): one dot product per row
            if torch.compiler.is_compiling():
                # a row reduction; written as a bmm it would stay, on CUDA, a cuBLAS batched GEMM
                # of S tiny 1 x D x 1 products (inductor rewrites such bmms as reductions on CPU only)
                dots = (yb.float() * dy_slot.float()).sum(-1)
            else:
                dots = torch.bmm(yb.unsqueeze(1), dy_slot.unsqueeze(2)).view(-1)
            dw = dots[slot_of].to(ctx.w_dtype)
        return dy_slot.mul_(w_slot[:, None].to(dy.dtype)), dw, None, None, None
