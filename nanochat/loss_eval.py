"""
Validation loss in bits per byte, as upstream nanochat's evaluate_bpb.

The mean cross entropy per token depends on the tokenizer: a bigger vocab packs more text into a
token, so its per-token loss is higher for the same model quality. Bits per byte does not: it
divides the summed loss (nats, turned into bits) by the number of UTF-8 bytes the target tokens
stand for,

    bpb = sum_t loss_t / (ln 2 * sum_t bytes(target_t))

Special tokens (<|bos|>: token_bytes 0) count neither in the numerator nor in the denominator,
nor do targets set to -1 (ignored). Every rank evaluates its own batches and the two sums are
added over ranks before the division.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist

from nanochat.common import let_go


@torch.no_grad()
def evaluate_bpb(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], token_bytes: torch.Tensor,
                 autocast_ctx=None) -> float:  # fmt: skip
    """model(x, y, loss_reduction="none") -> per-token loss [B, T]; token_bytes int [vocab] on the
    batches' device. Returns bits per byte over all batches of all ranks (inf if no bytes)."""
    nats = bytes_ = None
    for x, y in batches:
        if autocast_ctx is not None:
            with autocast_ctx:
                loss = model(x, y, loss_reduction="none")
        else:
            loss = model(x, y, loss_reduction="none")
        y = y.reshape(-1)
        valid = y >= 0
        n_bytes = torch.where(valid, token_bytes[y.clamp(min=0)], 0).to(torch.int64)
        batch_nats = (loss.reshape(-1).float() * (n_bytes > 0)).sum()
        nats = batch_nats if nats is None else nats + batch_nats
        bytes_ = n_bytes.sum() if bytes_ is None else bytes_ + n_bytes.sum()
    if nats is None:
        raise ValueError("evaluate_bpb got no batches")
    totals = torch.stack([nats.double(), bytes_.double()])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        let_go([totals])  # the last collective before exit when the last step evaluates
    total_nats, total_bytes = totals.tolist()
    return total_nats / (math.log(2) * total_bytes) if total_bytes > 0 else float("inf")
