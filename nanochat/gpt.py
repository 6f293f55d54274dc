"""
The GPT, nanochat style, as the user's MoE fork builds it:
- rotary position embeddings (no learned positions), QK norm, parameter-free RMSNorm
- untied token embedding and lm_head (vocab padded to a multiple of 64), no biases, logits
  soft-capped at 15
- per-layer scalars: before block i the stream is resid_lambdas[i] * x + x0_lambdas[i] * x0,
  x0 being the normalized token embedding
- value embeddings on alternating layers (the last one included): a second embedding of the
  input tokens added to the attention values through a gate, 2 * sigmoid of a linear map of the
  block input's first 32 channels (one gate per head; 1.0 at init)
- sliding-window attention by layer: `window_pattern` tiled over the layers, L = the full context,
  S = half of it (sequence_len // 2 tokens back); the last layer always L
- ReLU^2 MLP, or a Mixture-of-Experts block (nanochat/moe.py) in layers 0, moe_freq, 2*moe_freq, ...
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.moe import MoE, relu_squared
from nanochat.muon import MuonAdamW

VE_GATE_CHANNELS = 32  # the value-embedding gate reads this many channels of the block input
VOCAB_MULTIPLE = 64  # embedding rows and logits are padded to a multiple of this


@dataclass
class GPTConfig:
    sequence_len: int = 2048  # tokens per row (rotary tables and window masks are this long)
    vocab_size: int = 32768  # token ids 0..vocab_size-1 (upstream's tokenizer: 32,768)
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads (head dim = n_embd / n_head)
    n_embd: int = 768  # model width
    window_pattern: str = "SSSL"  # attention window per layer, tiled: L full context, S half
    use_moe: bool = False  # Mixture-of-Experts instead of the MLP in every moe_freq-th block
    n_experts: int = 8  # experts per MoE block
    expert_topk: int = 2  # experts each token is routed to
    moe_freq: int = 1  # MoE in blocks 0, moe_freq, 2*moe_freq, ... (1: every block)
    expert_hidden_mult: float = 4.0  # expert hidden width = mult * n_embd
    moe_capacity_factor: float = 0.0  # 0: dropless; > 0: ceil(cf * tokens * k / E) slots per expert
    balance_loss_coeff: float = 0.01  # weight of the summed per-layer balance losses in the training loss
    moe_drop_order: str = "token"  # which assignments a full expert drops (nanochat/moe.py)

    def to_dict(self) -> dict:
        return asdict(self)

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Layers 0, moe_freq, 2*moe_freq, ...: the first block is always an MoE block."""
        return self.use_moe and layer_idx % self.moe_freq == 0

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layer))

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    def has_value_embedding(self, layer_idx: int) -> bool:
        """Every other layer, counted back from the last (which always has one)."""
        return layer_idx % 2 == (self.n_layer - 1) % 2

    def window_sizes(self) -> list[int]:
        """Per layer, how many earlier tokens a position attends to: sequence_len for L (the
        whole row), sequence_len // 2 for S; the pattern tiled over the layers, the last one L."""
        pattern = self.window_pattern.upper()
        if not pattern or set(pattern) - {"S", "L"}:
            raise ValueError(f"window pattern {self.window_pattern!r}: use only S and L")
        full, short = self.sequence_len, self.sequence_len // 2
        sizes = [short if pattern[i % len(pattern)] == "S" else full for i in range(self.n_layer)]
        sizes[-1] = full
        return sizes


def model_dims(depth: int, aspect_ratio: int, head_dim: int) -> tuple[int, int]:
    """Upstream nanochat sizing: width = depth * aspect_ratio rounded up to whole heads."""
    model_dim = math.ceil(depth * aspect_ratio / head_dim) * head_dim
    return model_dim, model_dim // head_dim


def scaling_params(c: GPTConfig) -> int:
    """The matrices a token goes through, counted from the config as the fork counts them on its
    model: every weight of the blocks (attention, value-embedding gates, MLPs, routers, and of each
    MoE layer's experts k/E, truncated) plus the lm_head; embeddings (lookups) and the per-layer
    scalars excluded. What the training horizon (nanochat/recipe.py) and the FLOPs count."""
    d = c.n_embd
    n = c.padded_vocab * d  # lm_head
    for i in range(c.n_layer):
        n += 4 * d * d  # q, k, v, proj
        if c.has_value_embedding(i):
            n += c.n_head * min(VE_GATE_CHANNELS, d)
        if c.is_moe_layer(i):
            experts = c.n_experts * 2 * d * int(c.expert_hidden_mult * d)
            n += d * c.n_experts + experts - int(experts * (1 - c.expert_topk / c.n_experts))
        else:
            n += 2 * d * 4 * d
    return n


def config_flops(c: GPTConfig) -> float:
    """Training FLOPs per token: 6 x scaling_params (each active weight, 2 FLOPs forward and 4
    backward) + the attention score/value matmuls, 12 * H * hd * (keys each query sees: the
    layer's window, at most the row) per layer. From the config alone, so it holds for any
    implementation of the layers (FP8 included)."""
    attn = sum(12 * c.n_head * (c.n_embd // c.n_head) * min(w, c.sequence_len) for w in c.window_sizes())
    return 6 * scaling_params(c) + attn


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=3)


def window_mask(seq_len: int, window: int, device=None) -> torch.Tensor:
    """[T, T] bool, True where query i may attend to key j: j <= i and i - j <= window."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & (i - j <= window)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        d = config.n_embd
        self.c_q = nn.Linear(d, d, bias=False)
        self.c_k = nn.Linear(d, d, bias=False)
        self.c_v = nn.Linear(d, d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.ve_channels = min(VE_GATE_CHANNELS, d)
        self.ve_gate = (
            nn.Linear(self.ve_channels, config.n_head, bias=False)
            if config.has_value_embedding(layer_idx)
            else None
        )

    def forward(
        self, x: torch.Tensor, ve: torch.Tensor | None, cos_sin, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """mask None: plain causal attention; else a [T, T] bool window mask."""
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:  # value embedding, gated per head: 2 * sigmoid(.) is in (0, 2), 1 at init
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_channels]))  # [B, T, H]
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim).to(
                v.dtype
            )  # bf16 under autocast
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK norm
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash kernel on GPU in bf16
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
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
        self.attn = CausalSelfAttention(config, layer_idx)
        self.is_moe = config.is_moe_layer(layer_idx)
        if self.is_moe:
            self.moe = MoE(
                config.n_embd,
                config.n_experts,
                config.expert_topk,
                config.expert_hidden_mult,
                config.moe_capacity_factor,
                config.balance_loss_coeff,
                config.moe_drop_order,
            )
        else:
            self.mlp = MLP(config.n_embd, 4 * config.n_embd)

    def forward(self, x, ve, cos_sin, mask):
        x = x + self.attn(norm(x), ve, cos_sin, mask)
        if self.is_moe:
            y, aux = self.moe(norm(x))
            return x + y, aux
        return x + self.mlp(norm(x)), None


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.windows = config.window_sizes()
        vocab = config.padded_vocab
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, config.n_embd),
                "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, vocab, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))  # values set by init_weights
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        self.value_embeds = nn.ModuleDict(
            {
                str(i): nn.Embedding(vocab, config.n_embd)
                for i in range(config.n_layer)
                if config.has_value_embedding(i)
            }
        )
        head_dim = config.n_embd // config.n_head
        cos, sin = self._precompute_rotary(config.sequence_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # one mask per distinct short window (a window of the whole row is plain causal attention)
        for w in sorted(set(self.windows)):
            if w < config.sequence_len:
                self.register_buffer(f"mask_{w}", window_mask(config.sequence_len, w, self.lm_head.weight.device),
                                     persistent=False)  # fmt: skip

    def _precompute_rotary(self, seq_len: int, head_dim: int, base: float = 10000.0):
        """cos and sin [1, T, 1, hd/2], rounded to bf16 (the fork keeps them in bf16 everywhere)."""
        device = self.lm_head.weight.device
        inv_freq = 1.0 / (
            base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
        )
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        return freqs.cos().bfloat16()[None, :, None, :], freqs.sin().bfloat16()[None, :, None, :]

    @torch.no_grad()
    def init_weights(self) -> None:
        """The fork's init, drawing its random numbers in the fork's order (so the same seed gives
        the same weights): token embedding N(0, 1), lm_head N(0, 0.001); q, k, v, the MLP's and each
        expert's input matrix and the value embeddings uniform with std 1/sqrt(n_embd); zeros for
        every output projection (each block starts as identity), the routers and the value
        embedding gates; resid_lambdas 1.0, x0_lambdas 0.1."""
        d = self.config.n_embd
        bound = 3**0.5 * d**-0.5  # uniform on [-b, b] has std b / sqrt(3)
        self.transformer.wte.weight.normal_(0.0, 1.0)
        self.lm_head.weight.normal_(0.0, 0.001)
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                lin.weight.uniform_(-bound, bound)
            block.attn.c_proj.weight.zero_()
            if block.is_moe:
                moe = block.moe
                moe.router.weight.zero_()
                for e in range(moe.n_experts):
                    # drawn as the fork's per-expert nn.Linear [hidden, dim], stored [dim, hidden]
                    w = torch.empty(moe.experts.hidden, d, device=moe.experts.w_fc.device)
                    moe.experts.w_fc[e].copy_(w.uniform_(-bound, bound).t())
                    moe.experts.w_proj[e].zero_()
            else:
                block.mlp.c_fc.weight.uniform_(-bound, bound)
                block.mlp.c_proj.weight.zero_()
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        for ve in self.value_embeds.values():
            ve.weight.uniform_(-bound, bound)
        for block in self.transformer.h:
            if block.attn.ve_gate is not None:
                block.attn.ve_gate.weight.zero_()
        cos, sin = self._precompute_rotary(self.config.sequence_len, self.config.n_embd // self.config.n_head)
        self.cos.copy_(cos)
        self.sin.copy_(sin)
        for w in set(self.windows):
            if w < self.config.sequence_len:
                getattr(self, f"mask_{w}").copy_(window_mask(self.config.sequence_len, w, self.cos.device))

    def estimate_flops(self) -> float:
        """Training FLOPs per token (config_flops of this model's config)."""
        return config_flops(self.config)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_reduction: str = "mean"):
        """idx: [B, T] token ids. Without targets: logits [B, T, V]. With targets (-1 = ignore):
        - loss_reduction "none": the cross entropy of every position, [B, T] (evaluation);
        - "mean": (loss, stats), loss = mean cross entropy + balance_loss_coeff * the balance
          losses summed over MoE layers (what backward sees), stats = detached tensors: `ce`, and
          for MoE models `bal` (the balance losses summed over MoE layers: top-k per layer at
          perfect balance, as the fork), `load` ([E] routed assignments summed over layers),
          `dropped` and `assigned` (summed over layers)."""
        B, T = idx.shape
        cos_sin = (self.cos[:, :T], self.sin[:, :T])
        x = norm(self.transformer.wte(idx))
        x0 = x
        auxes = []
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            w = self.windows[i]
            mask = getattr(self, f"mask_{w}")[:T, :T] if w < T else None
            x, aux = block(x, ve, cos_sin, mask)
            if aux is not None:
                auxes.append(aux)
        x = norm(x)
        softcap = 15.0
        logits = self.lm_head(x)[..., : self.config.vocab_size].float()
        logits = softcap * torch.tanh(logits / softcap)
        if targets is None:
            return logits
        if loss_reduction == "none":
            ce = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction="none"
            )
            return ce.view(B, T)
        ce = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        stats = {"ce": ce.detach()}
        loss = ce
        if auxes:
            loss = loss + sum(a["aux_loss"] for a in auxes)
            stats["bal"] = sum(a["bal"] for a in auxes)
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
        scalar_lr: float = 0.5,
        compile_backend: str | None = None,
    ) -> MuonAdamW:
        """Muon for every matrix in the blocks (attention, value-embedding gates, MLP, expert
        banks, routers), AdamW for the embeddings (token and value), the lm_head and the per-layer
        scalars (nanochat/muon.py), with the fork's groups: the embeddings and the lm_head at
        lr x 1/sqrt(width/768) (tuned at width 768; Muon's step is normalized, so its lr is not
        scaled), resid_lambdas at scalar_lr * 0.01, x0_lambdas at scalar_lr with beta1 0.96.
        Matrices are grouped by shape and layout, the routers apart (router_lr). Each group
        records its base lr as `initial_lr`; the trainer multiplies it by the schedule.
        compile_backend: the update math of each group runs compiled by it (nanochat/muon.py)."""
        scale = (self.config.n_embd / 768) ** -0.5
        adamw = dict(kind="adamw", betas=adam_betas, eps=1e-10, weight_decay=0.0)
        groups = [
            dict(adamw, params=[self.lm_head.weight], lr=unembedding_lr * scale),
            dict(adamw, params=[self.transformer.wte.weight], lr=embedding_lr * scale),
        ]
        if self.value_embeds:
            groups.append(
                dict(adamw, params=[v.weight for v in self.value_embeds.values()], lr=embedding_lr * scale)
            )
        groups.append(dict(adamw, params=[self.resid_lambdas], lr=scalar_lr * 0.01))
        groups.append(dict(adamw, params=[self.x0_lambdas], lr=scalar_lr, betas=(0.96, adam_betas[1])))
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
        return MuonAdamW(groups, rank=rank, world_size=world_size, max_grad_norm=max_grad_norm,
                         compile_backend=compile_backend)  # fmt: skip
