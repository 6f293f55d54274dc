"""
The GPT, nanochat style:
- rotary position embeddings (no learned positions), QK norm, parameter-free RMSNorm
- untied token embedding and lm_head, no biases, logits soft-capped at 15
- ReLU^2 MLP, or a Mixture-of-Experts block (nanochat/moe.py) in every `moe_freq`-th layer
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.moe import MoE, relu_squared
from nanochat.muon import MuonAdamW


@dataclass
class GPTConfig:
    sequence_len: int = 1024  # tokens per row (the rotary tables are precomputed this long)
    vocab_size: int = 32768  # token ids 0..vocab_size-1 (upstream's tokenizer: 32,768)
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads (head dim = n_embd / n_head)
    n_embd: int = 768  # model width
    use_moe: bool = False  # Mixture-of-Experts instead of the MLP in every moe_freq-th block
    n_experts: int = 8  # experts per MoE block
    expert_topk: int = 2  # experts each token is routed to
    moe_freq: int = 1  # MoE in blocks moe_freq-1, 2*moe_freq-1, ... (1: every block)
    expert_hidden_mult: float = 2.0  # expert hidden width = mult * n_embd
    moe_capacity_factor: float = 0.0  # 0: dropless; > 0: ceil(cf * tokens * k / E) slots per expert
    balance_loss_coeff: float = 0.01  # weight of the Switch balance loss added to the training loss

    def to_dict(self) -> dict:
        return asdict(self)

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Every moe_freq-th layer, counting from 1: layers moe_freq-1, 2*moe_freq-1, ..."""
        return self.use_moe and (layer_idx + 1) % self.moe_freq == 0

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layer))


def model_dims(depth: int, aspect_ratio: int, head_dim: int) -> tuple[int, int]:
    """Upstream nanochat sizing: width = depth * aspect_ratio rounded up to whole heads."""
    model_dim = math.ceil(depth * aspect_ratio / head_dim) * head_dim
    return model_dim, model_dim // head_dim


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=3)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        d = config.n_embd
        self.c_q = nn.Linear(d, d, bias=False)
        self.c_k = nn.Linear(d, d, bias=False)
        self.c_v = nn.Linear(d, d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK norm
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash kernel on GPU in bf16
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(relu_squared(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.is_moe = config.is_moe_layer(layer_idx)
        if self.is_moe:
            self.moe = MoE(
                config.n_embd,
                config.n_experts,
                config.expert_topk,
                config.expert_hidden_mult,
                config.moe_capacity_factor,
                config.balance_loss_coeff,
            )
        else:
            self.mlp = MLP(config.n_embd, 4 * config.n_embd)

    def forward(self, x, cos_sin):
        x = x + self.attn(norm(x), cos_sin)
        if self.is_moe:
            y, aux = self.moe(norm(x))
            return x + y, aux
        return x + self.mlp(norm(x)), None


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        head_dim = config.n_embd // config.n_head
        cos, sin = self._precompute_rotary(config.sequence_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _precompute_rotary(self, seq_len: int, head_dim: int, base: float = 10000.0):
        device = self.lm_head.weight.device
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # [1, T, 1, hd/2]

    @torch.no_grad()
    def init_weights(self) -> None:
        """Upstream nanochat's init: unit-normal embedding, fan-in scaled matrices, and zeros for
        the lm_head and every residual output projection (so each block starts as identity)."""

        def _fan_in_normal(w: torch.Tensor, fan_in: int, fan_out: int) -> None:
            std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
            w.normal_(0.0, std)

        self.transformer.wte.weight.normal_(0.0, 1.0)
        self.lm_head.weight.zero_()
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                _fan_in_normal(lin.weight, lin.in_features, lin.out_features)
            block.attn.c_proj.weight.zero_()
            if block.is_moe:
                moe = block.moe
                _fan_in_normal(moe.router.weight, moe.dim, moe.n_experts)
                _fan_in_normal(moe.experts.w_fc, moe.dim, moe.experts.hidden)
                moe.experts.w_proj.zero_()
            else:
                _fan_in_normal(block.mlp.c_fc.weight, block.mlp.c_fc.in_features, block.mlp.c_fc.out_features)
                block.mlp.c_proj.weight.zero_()
        cos, sin = self._precompute_rotary(self.config.sequence_len, self.config.n_embd // self.config.n_head)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6 x active matmul params (embedding lookup excluded; in an MoE
        layer the router plus k of E experts) + the attention score/value matmuls, 12 * L * D * T.
        Computed from the config, so it holds for any implementation of the layers (FP8 included)."""
        c = self.config
        d = c.n_embd
        active = c.vocab_size * d  # lm_head
        for i in range(c.n_layer):
            active += 4 * d * d  # q, k, v, proj
            if c.is_moe_layer(i):
                hidden = int(c.expert_hidden_mult * d)
                active += d * c.n_experts + c.expert_topk * 2 * d * hidden
            else:
                active += 2 * d * 4 * d
        head_dim = d // c.n_head
        return 6 * active + 12 * c.n_layer * c.n_head * head_dim * c.sequence_len

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_reduction: str = "mean"):
        """idx: [B, T] token ids. Without targets: logits [B, T, V]. With targets (-1 = ignore):
        - loss_reduction "none": the cross entropy of every position, [B, T] (evaluation);
        - "mean": (loss, stats), loss = mean cross entropy + balance losses (what backward sees),
          stats = detached tensors: `ce`, and for MoE models `bal` (mean over MoE layers, 1.0 =
          balanced), `load` ([E] routed assignments summed over layers), `dropped` and
          `assigned` (summed over layers)."""
        B, T = idx.shape
        cos_sin = (self.cos[:, :T], self.sin[:, :T])
        x = norm(self.transformer.wte(idx))
        auxes = []
        for block in self.transformer.h:
            x, aux = block(x, cos_sin)
            if aux is not None:
                auxes.append(aux)
        x = norm(x)
        softcap = 15.0
        logits = self.lm_head(x).float()
        logits = softcap * torch.tanh(logits / softcap)
        if targets is None:
            return logits
        if loss_reduction == "none":
            ce = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction="none")
            return ce.view(B, T)
        ce = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        stats = {"ce": ce.detach()}
        loss = ce
        if auxes:
            loss = loss + sum(a["aux_loss"] for a in auxes)
            stats["bal"] = sum(a["bal"] for a in auxes) / len(auxes)
            stats["load"] = sum(a["load"] for a in auxes)
            stats["dropped"] = sum(a["dropped"] for a in auxes)
            stats["assigned"] = sum(a["assigned"] for a in auxes)
        return loss, stats

    def moe_modules(self) -> list[MoE]:
        return [b.moe for b in self.transformer.h if b.is_moe]

    def setup_optimizer(
        self,
        embedding_lr: float = 0.3,
        unembedding_lr: float = 0.004,
        matrix_lr: float = 0.02,
        weight_decay: float = 0.2,
        router_lr: float | None = None,
        adam_betas: tuple[float, float] = (0.8, 0.95),
        rank: int = 0,
        world_size: int = 1,
        max_grad_norm: float = 0.0,
    ) -> MuonAdamW:
        """Muon for every matrix in the blocks (attention, MLP, expert banks, routers), AdamW for
        the embedding and the lm_head (nanochat/muon.py). The AdamW learning rates scale as
        1/sqrt(width/768), as upstream (they were tuned at width 768); Muon's do not (its step is
        normalized). Matrices are grouped by shape and layout, the routers apart (router_lr).
        Each group records its base lr as `initial_lr`; the trainer multiplies it by the schedule."""
        scale = (self.config.n_embd / 768) ** -0.5
        adamw = dict(kind="adamw", betas=adam_betas, eps=1e-10, weight_decay=0.0)
        groups = [
            dict(adamw, params=[self.lm_head.weight], lr=unembedding_lr * scale),
            dict(adamw, params=[self.transformer.wte.weight], lr=embedding_lr * scale),
        ]
        routers = {id(m.router.weight) for m in self.moe_modules()}
        banks = {id(p) for m in self.moe_modules() for p in (m.experts.w_fc, m.experts.w_proj)}
        by_kind: dict[tuple, list[nn.Parameter]] = {}
        for p in self.transformer.h.parameters():
            key = (id(p) in routers, id(p) in banks, tuple(p.shape[-2:]))
            by_kind.setdefault(key, []).append(p)
        for (is_router, in_out, _), params in by_kind.items():
            lr = (matrix_lr if router_lr is None else router_lr) if is_router else matrix_lr
            groups.append(dict(kind="muon", params=params, lr=lr, momentum=0.95, beta2=0.95, ns_steps=5,
                               weight_decay=weight_decay, in_out=in_out))  # fmt: skip
        n_grouped = sum(len(g["params"]) for g in groups)
        assert n_grouped == len(list(self.parameters())), "every parameter in exactly one group"
        for g in groups:
            g["initial_lr"] = g["lr"]
        return MuonAdamW(groups, rank=rank, world_size=world_size, max_grad_norm=max_grad_norm)
