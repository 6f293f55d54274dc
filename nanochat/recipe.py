"""
The fork's scaling rules: how long to train, with what batch, and how the learning rates and the
weight decay follow the batch and the horizon. Hyperparameters were tuned on a d12 model trained
on batches of 2^19 tokens; a run of another size carries them over:

- horizon: --num-iterations, else --target-flops / (FLOPs per token x batch), else
  D = --target-param-data-ratio x the model's scaling parameters (gpt.scaling_params: the blocks'
  matrices, experts counted as active only, plus the lm_head) tokens, in whole batches;
- batch (--total-batch-size -1): 2^19 x (D / D_d12)^0.383 rounded to a power of two, D_d12 being
  the horizon of the d12 model of the same shape (the Power Lines fit, arXiv 2505.13738);
- every learning rate x sqrt(B / 2^19) (AdamW's square-root rule, applied to Muon as well);
- weight decay x sqrt(B / 2^19) x D_d12 / D, which keeps B / (lr x wd x D) at its d12 value
  (the T_epoch rule of arXiv 2405.13698).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from nanochat.gpt import GPTConfig, model_dims, scaling_params

B_REF = 2**19  # tokens per step the hyperparameters were tuned at (d12)
REF_DEPTH = 12


@dataclass
class Recipe:
    total_batch_size: int
    num_iterations: int
    lr_scale: float  # every learning rate is multiplied by this
    weight_decay: float  # Muon's weight decay at step 0 (it falls linearly to 0)
    notes: list[str] = field(default_factory=list)  # what was derived, one log line each


def reference_config(config: GPTConfig, aspect_ratio: int, head_dim: int) -> GPTConfig:
    """The d12 model of the same shape (aspect ratio, head dim, vocab, MoE layout)."""
    width, heads = model_dims(REF_DEPTH, aspect_ratio, head_dim)
    return replace(config, n_layer=REF_DEPTH, n_embd=width, n_head=heads)


def derive(
    config: GPTConfig,
    ref_config: GPTConfig,
    flops_per_token: float,
    total_batch_size: int = -1,
    num_iterations: int = -1,
    target_flops: float = -1.0,
    param_data_ratio: float = 10.5,
    weight_decay: float = 0.2,
) -> Recipe:
    """The batch, horizon, lr scale and weight decay of a run (module docstring). -1 = derive."""
    notes = []
    target_tokens = int(param_data_ratio * scaling_params(config))
    ref_tokens = param_data_ratio * scaling_params(ref_config)
    batch = total_batch_size
    if batch == -1:
        predicted = B_REF * (target_tokens / ref_tokens) ** 0.383
        batch = 2 ** round(math.log2(predicted))
        notes.append(f"Auto-computed optimal batch size: {batch:,} tokens")
    if num_iterations > 0:
        steps = num_iterations
    elif target_flops > 0:
        steps = max(1, round(target_flops / (flops_per_token * batch)))
        notes.append(f"Calculated number of iterations from target FLOPs: {steps:,}")
    else:
        steps = max(1, target_tokens // batch)
        notes.append(f"Calculated number of iterations from target data:param ratio: {steps:,}")
    lr_scale = 1.0
    if batch != B_REF:
        lr_scale = (batch / B_REF) ** 0.5
        notes.append(f"Scaling LRs by {lr_scale:.4f} for batch size {batch:,} (reference: {B_REF:,})")
    wd = weight_decay * math.sqrt(batch / B_REF) * (ref_tokens / target_tokens)
    if wd != weight_decay:
        notes.append(f"Scaling weight decay from {weight_decay:.6f} to {wd:.6f} for depth {config.n_layer}")
    return Recipe(batch, steps, lr_scale, wd, notes)
