"""The fork's scaling rules (nanochat/recipe.py), checked against what the fork's base_train prints
for the same model (depth 4, width 256, head dim 128, seq 256, the smoke corpus's 1024 tokens)."""

import pytest

from nanochat import recipe
from nanochat.gpt import GPTConfig, scaling_params


def d4() -> GPTConfig:
    return GPTConfig(sequence_len=256, vocab_size=1024, n_layer=4, n_head=2, n_embd=256)


def test_reference_is_the_d12_model_of_the_same_shape():
    ref = recipe.reference_config(d4(), aspect_ratio=64, head_dim=128)
    assert (ref.n_layer, ref.n_embd, ref.n_head, ref.vocab_size) == (12, 768, 6, 1024)
    assert scaling_params(d4()) == 3_145_856 + 262_144  # the fork: transformer_matrices + lm_head
    # 12 layers x 12 x 768^2, the value-embedding gates of 6 layers (6 heads x 32), the lm_head
    assert scaling_params(ref) == 12 * 12 * 768**2 + 6 * 6 * 32 + 1024 * 768


def test_a_given_batch_scales_lrs_by_its_square_root_and_the_weight_decay_by_the_horizon_too():
    # the fork at --total-batch-size 2048 --num-iterations 200: "Scaling LRs by 0.0625",
    # "Scaling weight decay from 0.200000 to 0.314415 for depth 4"
    c = d4()
    r = recipe.derive(
        c, recipe.reference_config(c, 64, 128), 2.241408e7, total_batch_size=2048, num_iterations=200
    )
    assert (r.total_batch_size, r.num_iterations) == (2048, 200)
    assert r.lr_scale == 0.0625
    assert f"{r.weight_decay:.6f}" == "0.314415"
    assert r.notes == ["Scaling LRs by 0.0625 for batch size 2,048 (reference: 524,288)",
                       "Scaling weight decay from 0.200000 to 0.314415 for depth 4"]  # fmt: skip


def test_batch_and_horizon_derived_as_the_fork():
    # the fork with neither --total-batch-size nor --num-iterations: "Auto-computed optimal batch
    # size: 131,072 tokens", "Scaling LRs by 0.5000", "Scaling weight decay from 0.200000 to
    # 2.515324", "Calculated number of iterations from target data:param ratio: 273"
    c = d4()
    r = recipe.derive(c, recipe.reference_config(c, 64, 128), 2.241408e7)
    assert (r.total_batch_size, r.num_iterations, r.lr_scale) == (131072, 273, 0.5)
    assert f"{r.weight_decay:.6f}" == "2.515324"
    # at the reference itself nothing is scaled
    ref = recipe.reference_config(c, 64, 128)
    r12 = recipe.derive(ref, ref, 1.0, total_batch_size=recipe.B_REF)
    assert (r12.lr_scale, r12.weight_decay) == (1.0, pytest.approx(0.2))
    # a FLOPs budget: whole steps of FLOPs per token x batch
    rf = recipe.derive(c, ref, 1e6, total_batch_size=2048, target_flops=2048e6 * 10.4)
    assert rf.num_iterations == 10
