"""Bits per byte, against a hand computation."""

import math

import pytest
import torch

from nanochat.loss_eval import evaluate_bpb


class FixedLoss:
    """A 'model' whose per-token loss is given: evaluate_bpb's arithmetic is all that is tested."""

    def __init__(self, losses):
        self.losses = iter(losses)

    def __call__(self, x, y, loss_reduction="mean"):
        assert loss_reduction == "none"
        return next(self.losses)


def test_bpb_is_summed_nats_over_summed_bytes_without_special_or_ignored_targets():
    # vocab of 5: token 0 is <|bos|> (0 bytes), the others 1, 2, 3 and 4 bytes
    token_bytes = torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32)
    y1 = torch.tensor([[1, 2, 0], [4, 3, 3]])
    l1 = torch.tensor([[0.5, 1.0, 9.0], [2.0, 0.25, 0.75]])  # 9.0 sits on a BOS target: not counted
    y2 = torch.tensor([[0, 4, -1]])
    l2 = torch.tensor([[7.0, 3.0, 5.0]])  # BOS and an ignored (-1) target: not counted
    x = torch.zeros(1, dtype=torch.long)
    nats = 0.5 + 1.0 + 2.0 + 0.25 + 0.75 + 3.0
    n_bytes = 1 + 2 + 4 + 3 + 3 + 4
    bpb = evaluate_bpb(FixedLoss([l1, l2]), [(x, y1), (x, y2)], token_bytes)
    assert bpb == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-12)
    assert bpb == pytest.approx(7.5 / (17 * math.log(2)))


def test_bpb_of_a_real_model_is_its_mean_loss_in_bits_over_mean_bytes():
    from nanochat.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    m = GPT(GPTConfig(sequence_len=8, vocab_size=16, n_layer=1, n_head=1, n_embd=16))
    m.init_weights()
    with torch.no_grad():
        m.lm_head.weight.zero_()  # uniform logits: every token costs ln(16) nats
    token_bytes = torch.full((16,), 2, dtype=torch.int32)
    token_bytes[0] = 0
    x = torch.randint(1, 16, (2, 8))
    assert evaluate_bpb(m, [(x, x)], token_bytes) == pytest.approx(math.log(16) / math.log(2) / 2)


def test_no_bytes_is_infinite_and_no_batches_is_an_error():
    token_bytes = torch.tensor([0, 1], dtype=torch.int32)
    y = torch.zeros(1, 2, dtype=torch.long)
    assert evaluate_bpb(FixedLoss([torch.ones(1, 2)]), [(y, y)], token_bytes) == float("inf")
    with pytest.raises(ValueError):
        evaluate_bpb(FixedLoss([]), [], token_bytes)
