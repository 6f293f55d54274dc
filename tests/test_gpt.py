"""GPT sizing, the fork's architecture (MoE placement, value embeddings, per-layer scalars, window
pattern, padded vocab, init), active-parameter FLOPs, loss at init, per-token loss."""

import math

import pytest
import torch

from nanochat.gpt import GPT, CausalSelfAttention, GPTConfig, model_dims, scaling_params, window_mask
from nanochat.moe import MoE


def test_model_dims_as_upstream():
    assert model_dims(12, 64, 64) == (768, 12)
    assert model_dims(2, 64, 64) == (128, 2)
    assert model_dims(20, 64, 128) == (1280, 10)
    assert model_dims(3, 50, 64) == (192, 3)  # 150 rounded up to whole heads


def small_config(**kw) -> GPTConfig:
    base = dict(sequence_len=16, vocab_size=96, n_layer=4, n_head=2, n_embd=32, n_experts=4, expert_topk=2,
                expert_hidden_mult=2)  # fmt: skip
    base.update(kw)
    return GPTConfig(**base)


@pytest.mark.slow
def test_moe_freq_places_moe_from_the_first_layer_as_the_fork():
    model = GPT(small_config(use_moe=True, moe_freq=2))
    assert [b.is_moe for b in model.transformer.h] == [True, False, True, False]
    assert len(model.moe_modules()) == 2
    assert all(isinstance(m, MoE) for m in model.moe_modules())
    assert [b.is_moe for b in GPT(small_config(use_moe=True, n_layer=5, moe_freq=3)).transformer.h] == [
        True, False, False, True, False,
    ]  # fmt: skip
    assert not any(b.is_moe for b in GPT(small_config(use_moe=False)).transformer.h)


def test_value_embeddings_on_alternating_layers_ending_with_the_last():
    for n_layer, expected in ((4, [1, 3]), (5, [0, 2, 4]), (1, [0])):
        m = GPT(small_config(n_layer=n_layer))
        assert sorted(int(k) for k in m.value_embeds) == expected
        assert [b.attn.ve_gate is not None for b in m.transformer.h] == [
            i in expected for i in range(n_layer)
        ]
    assert tuple(GPT(small_config()).transformer.h[1].attn.ve_gate.weight.shape) == (2, 32)  # a gate per head


def test_window_pattern_is_tiled_short_is_half_the_context_and_the_last_layer_is_full():
    assert small_config(n_layer=6, sequence_len=256).window_sizes() == [128, 128, 128, 256, 128, 256]
    assert small_config(n_layer=3, window_pattern="L").window_sizes() == [16, 16, 16]
    assert small_config(n_layer=3, window_pattern="sl").window_sizes() == [8, 16, 16]
    with pytest.raises(ValueError, match="only S and L"):
        small_config(window_pattern="SX").window_sizes()
    mask = window_mask(6, 2)
    assert mask[5].tolist() == [False, False, False, True, True, True]  # itself and 2 back
    assert mask[1].tolist() == [True, True, False, False, False, False]  # causal


def test_a_short_window_attends_only_within_it():
    torch.manual_seed(0)
    attn = CausalSelfAttention(small_config(), layer_idx=0)
    x = torch.randn(1, 16, 32)
    cos = torch.ones(1, 16, 1, 8)
    sin = torch.zeros(1, 16, 1, 8)
    mask = window_mask(16, 8)
    y = attn(x, None, (cos, sin), mask)
    x2 = x.clone()
    x2[0, 2] += 1.0  # token 2 is 13 back from token 15 (outside its window), 8 back from token 10
    y2 = attn(x2, None, (cos, sin), mask)
    assert torch.equal(y2[0, 15], y[0, 15]) and not torch.allclose(y2[0, 10], y[0, 10])
    torch.testing.assert_close(
        attn(x, None, (cos, sin), None), attn(x, None, (cos, sin), window_mask(16, 16))
    )


def test_init_follows_the_fork():
    torch.manual_seed(0)
    c = small_config(use_moe=True, moe_freq=2)
    m = GPT(c)
    m.init_weights()
    assert m.transformer.wte.weight.shape[0] == m.lm_head.weight.shape[0] == 128  # 96 padded to 64s
    assert m.lm_head.weight.std().item() == pytest.approx(0.001, rel=0.1)
    bound = 3**0.5 / 32**0.5
    b0 = m.transformer.h[0]
    for w in (
        b0.attn.c_q.weight,
        b0.moe.experts.w_fc,
        m.value_embeds["1"].weight,
        m.transformer.h[1].mlp.c_fc.weight,
    ):
        assert w.abs().max() <= bound and w.std().item() == pytest.approx(32**-0.5, rel=0.15)
    for w in (
        b0.attn.c_proj.weight,
        b0.moe.router.weight,
        b0.moe.experts.w_proj,
        m.transformer.h[1].attn.ve_gate.weight,
    ):
        assert not w.any()
    assert m.resid_lambdas.tolist() == [1.0] * 4 and m.x0_lambdas.tolist() == pytest.approx([0.1] * 4)


def test_init_draws_the_fork_s_random_numbers_in_the_fork_s_order():
    """Seeded alike, the weights are the fork's: each tensor drawn in the fork's order and shape
    (each expert's input matrix as the fork's [hidden, dim] nn.Linear, stored transposed)."""
    c = small_config(use_moe=True, n_layer=2, moe_freq=2)
    m = GPT(c)
    torch.manual_seed(42)
    m.init_weights()
    torch.manual_seed(42)
    s = 3**0.5 / 32**0.5
    wte = torch.empty(128, 32).normal_(0, 1)
    head = torch.empty(128, 32).normal_(0, 0.001)
    qkv0 = [torch.empty(32, 32).uniform_(-s, s) for _ in range(3)]
    experts = [torch.empty(64, 32).uniform_(-s, s) for _ in range(4)]
    qkv1 = [torch.empty(32, 32).uniform_(-s, s) for _ in range(3)]
    mlp1 = torch.empty(128, 32).uniform_(-s, s)
    ve1 = torch.empty(128, 32).uniform_(-s, s)
    assert torch.equal(m.transformer.wte.weight, wte) and torch.equal(m.lm_head.weight, head)
    b0, b1 = m.transformer.h
    assert all(
        torch.equal(lin.weight, w)
        for lin, w in zip((b0.attn.c_q, b0.attn.c_k, b0.attn.c_v), qkv0, strict=True)
    )
    assert all(torch.equal(b0.moe.experts.w_fc[e], experts[e].t()) for e in range(4))
    assert all(
        torch.equal(lin.weight, w)
        for lin, w in zip((b1.attn.c_q, b1.attn.c_k, b1.attn.c_v), qkv1, strict=True)
    )
    assert torch.equal(b1.mlp.c_fc.weight, mlp1) and torch.equal(m.value_embeds["1"].weight, ve1)


def test_estimate_flops_counts_active_matmul_params_and_each_layer_s_window():
    def attn_term(c):
        return sum(12 * c.n_head * (c.n_embd // c.n_head) * w for w in c.window_sizes())

    def not_matmuls(m):
        return (m.transformer.wte.weight.numel() + sum(v.weight.numel() for v in m.value_embeds.values())
                + 2 * m.config.n_layer)  # fmt: skip

    # with k == E every expert is active: 6 x (all params but the lookups and the scalars)
    c = small_config(use_moe=True, expert_topk=4)
    m = GPT(c)
    n_active = sum(p.numel() for p in m.parameters()) - not_matmuls(m)
    assert m.estimate_flops() == 6 * n_active + attn_term(c)
    assert attn_term(c) == 12 * 32 * (8 + 8 + 8 + 16)  # SSSL: three layers see half the row
    # with k of E, (E - k) experts' weights per layer drop out
    c2 = small_config(use_moe=True, expert_topk=2)
    m2 = GPT(c2)
    expert_params = m2.moe_modules()[0].experts.w_fc.numel() + m2.moe_modules()[0].experts.w_proj.numel()
    dropped = c2.n_layer * expert_params * (4 - 2) // 4
    assert m2.estimate_flops() == 6 * (n_active - dropped) + attn_term(c2)
    # a dense model with a 4x MLP has the same active FLOPs as top-2 of experts with 2x hidden (+ router)
    dense = GPT(small_config(use_moe=False)).estimate_flops()
    assert m2.estimate_flops() - dense == 6 * c2.n_layer * c2.n_embd * c2.n_experts
    # the horizon's count, from the config: the blocks' matrices (experts as active) and the lm_head
    assert scaling_params(c2) == sum(p.numel() for p in m2.transformer.h.parameters()) - dropped + 128 * 32


@pytest.mark.slow
@pytest.mark.parametrize("use_moe,cf", [(False, 0.0), (True, 0.0), (True, 1.0)])
def test_forward_loss_at_init_is_log_vocab(use_moe, cf):
    torch.manual_seed(0)
    c = small_config(use_moe=use_moe, moe_capacity_factor=cf, balance_loss_coeff=0.0)
    m = GPT(c)
    m.init_weights()
    idx = torch.randint(0, c.vocab_size, (2, c.sequence_len))
    loss, stats = m(idx, idx)
    # lm_head N(0, 0.001): nearly uniform logits
    assert float(stats["ce"]) == pytest.approx(math.log(c.vocab_size), abs=5e-3)
    assert float(loss.detach()) == pytest.approx(math.log(c.vocab_size), abs=5e-3)
    assert m(idx).shape == (2, c.sequence_len, c.vocab_size)  # the padding is cut off
    if use_moe:
        assert set(stats) == {"ce", "bal", "load", "dropped", "assigned"}
        assert float(stats["load"].sum()) == c.n_layer * 2 * c.sequence_len * c.expert_topk
        # a zero router gives uniform probabilities: each layer's balance loss is exactly k
        assert float(stats["bal"]) == pytest.approx(c.n_layer * c.expert_topk)
        loss.backward()
        assert all(p.grad is not None for p in m.parameters())


class _PlusEmbedding(torch.nn.Module):
    """c_v followed by + scale * ve: the values the gate should produce."""

    def __init__(self, lin, ve, scale):
        super().__init__()
        self.lin, self.ve, self.scale = lin, ve, scale

    def forward(self, x):
        return self.lin(x) + self.scale * self.ve


class _ConstantLogit(torch.nn.Module):
    def __init__(self, value, heads):
        super().__init__()
        self.value, self.heads = value, heads

    def forward(self, x):
        return torch.full((*x.shape[:-1], self.heads), self.value)


@pytest.mark.parametrize("logit", [0.0, 1.5, -3.0])
def test_value_embedding_is_added_to_the_values_times_two_sigmoid_of_the_gate(logit):
    torch.manual_seed(0)
    attn = CausalSelfAttention(small_config(n_layer=1), layer_idx=0)
    x, ve = torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    cos_sin = (torch.ones(1, 16, 1, 8), torch.zeros(1, 16, 1, 8))
    if logit == 0.0:
        torch.nn.init.zeros_(attn.ve_gate.weight)  # as initialized: the gate is exactly 1
    else:
        attn.ve_gate = _ConstantLogit(logit, 2)
    ref = CausalSelfAttention(small_config(n_layer=1), layer_idx=0)
    ref.load_state_dict(attn.state_dict(), strict=False)
    ref.c_v = _PlusEmbedding(attn.c_v, ve, 2 * torch.sigmoid(torch.tensor(logit)))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, ve, cos_sin, None), ref(x, None, cos_sin, None))


def test_per_token_loss_matches_the_mean_and_ignores_minus_one():
    torch.manual_seed(0)
    c = small_config(use_moe=True, moe_capacity_factor=1.0)
    m = GPT(c)
    m.init_weights()
    with torch.no_grad():
        m.lm_head.weight.normal_(0, 0.5)  # not uniform logits
    idx = torch.randint(0, c.vocab_size, (2, c.sequence_len))
    tgt = idx.roll(-1, 1)
    torch.set_grad_enabled(False)
    per_token = m(idx, tgt, loss_reduction="none")
    assert per_token.shape == (2, c.sequence_len)
    _, stats = m(idx, tgt)
    assert float(per_token.mean()) == pytest.approx(float(stats["ce"]), rel=1e-5)
    tgt[0, :5] = -1
    masked = m(idx, tgt, loss_reduction="none")
    torch.set_grad_enabled(True)
    assert (masked[0, :5] == 0).all() and torch.allclose(masked[1], per_token[1])
