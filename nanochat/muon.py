"""
The optimizer: Muon for every weight matrix, AdamW for the embedding and the lm_head, as upstream
nanochat and the MoE fork this trainer follows train their models.

Muon (MomentUm Orthogonalized by Newton-Schulz, https://kellerjordan.github.io/posts/muon/) keeps
SGD momentum per matrix and steps along the orthogonalized momentum: G = U S V^T becomes
~U V^T, every singular direction moved by the same amount, so the few directions a raw gradient
is dominated by no longer drown the rest. Here, for each step and each matrix:

1. Nesterov momentum: m = lerp(m, g, 1 - mu); the update direction is lerp(g, m, mu).
2. Orthogonalize with 5 iterations of the Polar Express polynomial (Amsel et al. 2025,
   https://arxiv.org/abs/2505.16932), a tuned Newton-Schulz: X <- a X + (b A + c A^2) X with
   A = X X^T, in bf16 on every device, as the fork (on a CPU with bf16 matmul units it is 2.4x
   faster than fp32 at d4). X starts at G / ||G||_F, so every singular value is <= 1.
3. NorMuon (https://arxiv.org/abs/2510.05491): orthogonalized rows (or columns, whichever side
   is longer) still differ in size; divide each by the root of an EMA (beta2) of its mean square,
   then rescale so the matrix keeps its norm.
4. Cautious weight decay: decay only the entries whose update has the weight's sign, then step
   by lr * sqrt(max(1, fan_out / fan_in)).

Matrices of the same shape are stacked and processed as one batch. A Mixture-of-Experts bank
[E, in, out] is E matrices: each expert is orthogonalized on its own (a batched Newton-Schulz
over the leading dims), and its lr uses its own fan-out/fan-in. nn.Linear weights are [out, in];
expert banks are stored [in, out] (activation @ weight), so groups say which (`in_out`).

Across ranks (torchrun), as upstream's distributed Muon: each stack of K matrices is cut into
W equal shares (zero padded); every rank receives the average gradient of its share only
(reduce-scatter), runs Muon on it, and the updated shares are gathered back on every rank
(all-gather). So the Newton-Schulz work is split W ways and the traffic is that of one
all-reduce; each rank keeps momentum only for its share (checkpoints save one optimizer file per
rank). AdamW's two tensors are all-reduced and updated on every rank.

Groups are dicts with `kind` "muon" (lr, momentum, beta2, weight_decay, ns_steps, in_out) or
"adamw" (lr, betas, eps, weight_decay); the trainer sets lr, momentum and weight_decay per step.

With compile_backend (e.g. "inductor"), each group's update math (muon_update, adamw_update: one stack or tensor, in
place) runs through torch.compile(fullgraph=True, dynamic=False), as the fork compiles its step:
one fused graph per shape instead of dozens of small kernels and their Python overhead. The
hyperparameters then go in as 0-D CPU tensors, so a new lr or momentum each step is new data, not
a new graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist

from nanochat.common import let_go, wait_and_let_go

# (a, b, c) of each Polar Express iteration, for 5 iterations (the paper's safety factor 2e-2, cushion 2)
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]

# the single-tensor collectives: newer torch names them *_single, older ones *_tensor
NS_DTYPE = (
    torch.bfloat16
)  # the dtype of the Newton-Schulz iterations (the fork's; float32 to compare paths exactly)

_all_gather = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or getattr(dist, "reduce_scatter_tensor", None)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """~U V^T for every matrix of a stack g [N, r, c] = U S V^T (singular values land in about
    [0.7, 1.2], which trains as well as exactly 1). In NS_DTYPE: bf16, as the fork's."""
    x = g.to(NS_DTYPE)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: the Gram matrix A is the smaller one
        x = x.mT
    for a, b, c in POLAR_EXPRESS[:steps]:
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if tall else x


def normalize_neurons(u: torch.Tensor, second: torch.Tensor, beta2: float) -> torch.Tensor:
    """NorMuon. u [N, r, c] orthogonalized; second [N, r, 1] (rows, when r >= c) or [N, 1, c]
    (columns) holds an EMA of their mean squares. Each row (column) is divided by the root of its
    EMA, then the matrix is scaled back to the norm it had."""
    dim = -1 if u.size(-2) >= u.size(-1) else -2
    mean_sq = u.float().square().mean(dim=dim, keepdim=True)
    second.lerp_(mean_sq.to(second.dtype), 1 - beta2)
    inv_rms = second.float().clamp_min(1e-10).rsqrt()
    # ||u||^2 = n * sum(mean_sq); after scaling, n * sum(mean_sq * inv_rms^2): n cancels
    keep_norm = (mean_sq.sum(dim=(-2, -1), keepdim=True) /
                 (mean_sq * inv_rms.square()).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-20)).sqrt()  # fmt: skip
    return u * (inv_rms * keep_norm).to(u.dtype)


def muon_update(grad, params, momentum, second, mu, lr, wd, beta2, ns_steps: int) -> None:
    """One Muon step on a stack of matrices, in place on params [N, r, c], momentum (same shape)
    and second (NorMuon's EMA). grad is overwritten (it becomes the Nesterov direction). mu, lr
    (the fan-scaled lr), wd, beta2: floats, or 0-D tensors when compiled."""
    momentum.lerp_(grad, 1 - mu)
    direction = grad.lerp_(momentum, mu)  # Nesterov: look one momentum step ahead
    u = orthogonalize(direction, ns_steps)
    u = normalize_neurons(u, second, beta2).to(params.dtype)
    agree = (u * params) >= 0  # cautious: decay only where the step pulls the weight toward 0
    params.sub_(lr * (u + wd * params * agree))


def adamw_update(p, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, wd) -> None:
    """One AdamW step (decoupled weight decay, bias-corrected moments), in place on p and its two
    moments. step, lr, beta1, beta2, eps, wd: floats, or 0-D tensors when compiled."""
    p.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt() + eps
    p.sub_(exp_avg / denom * (lr / (1 - beta1**step)))


_COMPILED: dict[tuple[str, str], Callable] = {}


def compiled(fn: Callable, backend: str = "inductor") -> Callable:
    """fn through torch.compile(fullgraph, static shapes), made once per process and backend.
    Each distinct shape is a graph of its own, so dynamo may keep as many as a model has shapes
    (its default limit of 8 per function would fall back to eager past that)."""
    key = (fn.__name__, backend)
    if key not in _COMPILED:
        cfg = torch._dynamo.config
        name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
        setattr(cfg, name, max(getattr(cfg, name), 64))
        _COMPILED[key] = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
    return _COMPILED[key]


class MuonAdamW(torch.optim.Optimizer):
    """Muon groups and AdamW groups in one optimizer (see the module docstring)."""

    def __init__(self, param_groups: list[dict], rank: int = 0, world_size: int = 1, max_grad_norm: float = 0.0,
                 compile_backend: str | None = None):  # fmt: skip
        super().__init__(param_groups, defaults={})
        self.rank, self.world_size, self.max_grad_norm = rank, world_size, max_grad_norm
        self.compile_backend = compile_backend  # None: the update math runs eagerly
        # the hyperparameters as 0-D CPU tensors for the compiled math (filled before each call)
        self._hyper = {k: torch.zeros((), dtype=torch.float32) for k in ("a", "b", "c", "d", "e", "f")}
        for group in self.param_groups:
            if group["kind"] == "muon":
                shapes = {tuple(p.shape[-2:]) for p in group["params"]}
                if len(shapes) != 1 or any(p.dim() < 2 for p in group["params"]):
                    raise ValueError(f"a Muon group needs matrices of one shape, got {sorted(shapes)}")
            elif group["kind"] != "adamw":
                raise ValueError(f"unknown optimizer group kind {group['kind']!r}")

    def _hyperparams(self, *values: float) -> tuple:
        """The values as they go to the update math: floats eager, filled 0-D tensors compiled."""
        if self.compile_backend is None:
            return values
        out = []
        for t, v in zip(self._hyper.values(), values, strict=False):
            t.fill_(v)
            out.append(t)
        return tuple(out)

    # -- bookkeeping -----------------------------------------------------------------------------

    @staticmethod
    def matrix_shape(group: dict) -> tuple[int, int]:
        return tuple(group["params"][0].shape[-2:])

    def n_matrices(self, group: dict) -> int:
        r, c = self.matrix_shape(group)
        return sum(p.numel() // (r * c) for p in group["params"])

    def share_size(self, group: dict) -> int:
        """Matrices per rank (the last shares are zero padded)."""
        return math.ceil(self.n_matrices(group) / self.world_size)

    def describe(self) -> str:
        """`Muon (<n> matrices, <p> params) + AdamW (<n> tensors, <p> params)`; an expert bank
        counts as its E matrices."""
        muon = [g for g in self.param_groups if g["kind"] == "muon"]
        adamw = [p for g in self.param_groups if g["kind"] == "adamw" for p in g["params"]]
        n_mat = sum(self.n_matrices(g) for g in muon)
        p_mat = sum(p.numel() for g in muon for p in g["params"])
        return (f"Muon ({n_mat} matrices, {p_mat:,} params) + "
                f"AdamW ({len(adamw)} tensors, {sum(p.numel() for p in adamw):,} params)")  # fmt: skip

    def _owned_views(self, group: dict) -> list[torch.Tensor]:
        """Views of this rank's share of the group's matrices, in order."""
        r, c = self.matrix_shape(group)
        lo = self.rank * self.share_size(group)
        hi = min(lo + self.share_size(group), self.n_matrices(group))
        views, offset = [], 0
        for p in group["params"]:
            mats = p.view(-1, r, c)
            a, b = max(lo - offset, 0), min(hi - offset, mats.shape[0])
            if a < b:
                views.append(mats[a:b])
            offset += mats.shape[0]
        return views

    # -- the step --------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> None:
        W = self.world_size
        adamw = [g for g in self.param_groups if g["kind"] == "adamw"]
        muon = [g for g in self.param_groups if g["kind"] == "muon"]

        # 1. average the gradients: AdamW's whole (all-reduce), Muon's as each rank's share
        #    (reduce-scatter), every collective started before any is waited for
        adam_params = [p for g in adamw for p in g["params"]]
        adam_grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in adam_params]
        works = []
        sent = []  # every tensor handed to a collective, held here until its thread let go (let_go)
        flat = None
        if W > 1 and adam_grads:
            flat = torch.cat([g.reshape(-1) for g in adam_grads])
            works.append(dist.all_reduce(flat, async_op=True))
            sent.append(flat)
        shares = []
        for group in muon:
            r, c = self.matrix_shape(group)
            k = self.share_size(group)
            stacked = torch.zeros(
                k * W, r, c, dtype=group["params"][0].dtype, device=group["params"][0].device
            )
            torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).view(-1, r, c)
                       for p in group["params"]], out=stacked[: self.n_matrices(group)])  # fmt: skip
            if W > 1:
                share = torch.empty(k, r, c, dtype=stacked.dtype, device=stacked.device)
                works.append(_reduce_scatter(share, stacked, async_op=True))
                sent += [share, stacked]
            else:
                share = stacked
            shares.append(share)
        wait_and_let_go(works, sent)
        if W > 1:
            if flat is not None:
                flat.div_(W)
                adam_grads = list(flat.split([g.numel() for g in adam_grads]))
                adam_grads = [g.view_as(p) for g, p in zip(adam_grads, adam_params, strict=True)]
            for share in shares:
                share.div_(W)

        # 2. clip by the global norm, if asked (Muon's shares are disjoint: their squares add up)
        if self.max_grad_norm > 0:
            sq = torch.stack([s.float().square().sum() for s in shares]).sum() if shares else torch.zeros(())
            if W > 1:
                dist.all_reduce(sq)
                let_go([sq])
            sq = sq + sum(g.float().square().sum() for g in adam_grads)
            coef = (self.max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            for g in [*adam_grads, *shares]:
                g.mul_(coef.to(g.dtype))

        # 3. AdamW on every rank
        i = 0
        for group in adamw:
            for p in group["params"]:
                self._adamw_update(p, adam_grads[i], group)
                i += 1

        # 4. Muon on this rank's share, then the shares back to every rank
        gathers, sent = [], []
        for group, share in zip(muon, shares, strict=True):
            views = self._owned_views(group)
            n_own = sum(v.shape[0] for v in views)
            state = self.state[group["params"][0]]
            if "momentum" not in state:
                r, c = self.matrix_shape(group)
                k = share.shape[0]
                state["momentum"] = torch.zeros_like(share)
                state["second"] = torch.zeros(k, r, 1, dtype=share.dtype, device=share.device) if r >= c else \
                    torch.zeros(k, 1, c, dtype=share.dtype, device=share.device)  # fmt: skip
            if n_own == 0:  # a rank past the last matrix: only padding
                updated = torch.zeros_like(share)
            else:
                updated = self._muon_update(views, share[:n_own], state, group, n_own)
                if n_own < share.shape[0]:
                    updated = torch.cat(
                        [updated, updated.new_zeros(share.shape[0] - n_own, *updated.shape[1:])]
                    )
            if W == 1:
                torch._foreach_copy_(views, list(updated.split([v.shape[0] for v in views])))
            else:
                gathered = torch.empty(
                    share.shape[0] * W, *share.shape[1:], dtype=share.dtype, device=share.device
                )
                works.append(_all_gather(gathered, updated, async_op=True))
                gathers.append((gathered, group))
                sent += [gathered, updated]
        wait_and_let_go(works, sent)
        for gathered, group in gathers:
            r, c = self.matrix_shape(group)
            offset = 0
            for p in group["params"]:
                mats = p.view(-1, r, c)
                mats.copy_(gathered[offset : offset + mats.shape[0]])
                offset += mats.shape[0]

    def _adamw_update(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        hyper = self._hyperparams(
            state["step"], group["lr"], beta1, beta2, group["eps"], group["weight_decay"]
        )
        update = (
            adamw_update if self.compile_backend is None else compiled(adamw_update, self.compile_backend)
        )
        update(p, grad, state["exp_avg"], state["exp_avg_sq"], *hyper)

    def _muon_update(self, views, grad: torch.Tensor, state: dict, group: dict, n_own: int) -> torch.Tensor:
        """One Muon step for this rank's n_own matrices; returns their new values [n_own, r, c]."""
        r, c = self.matrix_shape(group)
        fan_in, fan_out = (r, c) if group["in_out"] else (c, r)
        lr = group["lr"] * max(1.0, fan_out / fan_in) ** 0.5
        params = torch.cat(views) if len(views) > 1 else views[0].clone()
        hyper = self._hyperparams(group["momentum"], lr, group["weight_decay"], group["beta2"])
        update = muon_update if self.compile_backend is None else compiled(muon_update, self.compile_backend)
        update(grad, params, state["momentum"][:n_own], state["second"][:n_own], *hyper, group["ns_steps"])
        return params
