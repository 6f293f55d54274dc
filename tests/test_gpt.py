"""GPT sizing, MoE layer placement, active-parameter FLOPs, loss at init, per-token loss."""

import math

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig, model_dims
from nanochat.moe import MoE


def test_model_dims_as_upstream():
    assert model_dims(12, 64, 64) == (768, 12)
    assert model_dims(2, 64, 64) == (128, 2)
    assert model_dims(20, 64, 128) == (1280, 10)
    assert model_dims(3, 50, 64) == (192, 3)  # 150 rounded up to whole heads


def small_config(**kw) -> GPTConfig:
    base = dict(sequence_len=16, vocab_size=96, n_layer=4, n_head=2, n_embd=32, n_experts=4, expert_topk=2)
    base.update(kw)
    return GPTConfig(**base)


def test_moe_freq_places_moe_in_every_nth_layer():
    model = GPT(small_config(use_moe=True, moe_freq=2))
    assert [b.is_moe for b in model.transformer.h] == [False, True, False, True]
    assert len(model.moe_modules()) == 2
    assert all(isinstance(m, MoE) for m in model.moe_modules())
    assert not any(b.is_moe for b in GPT(small_config(use_moe=False)).transformer.h)


def test_estimate_flops_counts_active_params_only():
    def attn_term(c):
        return 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.sequence_len

    # with k == E every expert is active: 6 x (all params except the embedding lookup)
    c = small_config(use_moe=True, expert_topk=4)
    m = GPT(c)
    n_active = sum(p.numel() for p in m.parameters()) - m.transformer.wte.weight.numel()
    assert m.estimate_flops() == 6 * n_active + attn_term(c)
    # with k of E, (E - k) experts' weights per layer drop out
    c2 = small_config(use_moe=True, expert_topk=2)
    m2 = GPT(c2)
    expert_params = m2.moe_modules()[0].experts.w_fc.numel() + m2.moe_modules()[0].experts.w_proj.numel()
    dropped = c2.n_layer * expert_params * (4 - 2) // 4
    assert m2.estimate_flops() == 6 * (n_active - dropped) + attn_term(c2)
    # a dense model with a 4x MLP has the same active FLOPs as top-2 of experts with 2x hidden (+ router)
    dense = GPT(small_config(use_moe=False)).estimate_flops()
    assert m2.estimate_flops() - dense == 6 * c2.n_layer * c2.n_embd * c2.n_experts


@pytest.mark.parametrize("use_moe,cf", [(False, 0.0), (True, 0.0), (True, 1.0)])
def test_forward_loss_at_init_is_log_vocab(use_moe, cf):
    torch.manual_seed(0)
    c = small_config(use_moe=use_moe, moe_capacity_factor=cf, balance_loss_coeff=0.0)
    m = GPT(c)
    m.init_weights()
    idx = torch.randint(0, c.vocab_size, (2, c.sequence_len))
    loss, stats = m(idx, idx)
    # zero-initialized lm_head: uniform logits
    assert float(stats["ce"]) == pytest.approx(math.log(c.vocab_size), abs=1e-5)
    assert float(loss.detach()) == pytest.approx(math.log(c.vocab_size), abs=1e-5)
    assert m(idx).shape == (2, c.sequence_len, c.vocab_size)
    if use_moe:
        assert set(stats) == {"ce", "bal", "load", "dropped", "assigned"}
        assert float(stats["load"].sum()) == c.n_layer * 2 * c.sequence_len * c.expert_topk
        loss.backward()
        assert all(p.grad is not None for p in m.parameters())


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
