"""
Checkpoints: <checkpoint_root>/<model_tag>/
    model_{step:06d}.pt             model state dict (uncompiled names), from rank 0
    optim_{step:06d}_rank{r}.pt     optimizer state of rank r: AdamW's (the same on every rank) and
                                    rank r's share of Muon's momentum (nanochat/muon.py), as upstream
    meta_{step:06d}.json            model config, trainer args, step, loss, world size, and the loop
                                    state a resume needs (schedule position, each rank's data position)
`step` counts completed optimizer steps, so resuming from step N runs step N next, on as many
ranks as wrote the checkpoint. Files are written to a temporary name and renamed, and the meta
file comes last, once every rank's file is in place: a killed run never leaves a checkpoint that
looks whole and is not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch


def checkpoint_dir(checkpoint_root: str | Path, model_tag: str) -> Path:
    return Path(checkpoint_root).expanduser() / model_tag


def checkpoint_paths(ckpt_dir: str | Path, step: int, rank: int = 0) -> dict[str, Path]:
    d = Path(ckpt_dir)
    return {
        "model": d / f"model_{step:06d}.pt",
        "optim": d / f"optim_{step:06d}_rank{rank}.pt",
        "meta": d / f"meta_{step:06d}.json",
    }


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model_state: dict,
    optim_state: dict | None,
    meta: dict | None,
    rank: int = 0,
    barrier: Callable[[], None] | None = None,
) -> Path:
    """Every rank calls this: rank 0 writes the model and (given) the meta, every rank its
    optimizer state. `barrier` (dist.barrier under torchrun) holds the meta back until all
    optimizer files are written."""
    paths = checkpoint_paths(ckpt_dir, step, rank)
    paths["model"].parent.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        _atomic_torch_save(model_state, paths["model"])
    if optim_state is not None:
        _atomic_torch_save(optim_state, paths["optim"])
    if barrier is not None:
        barrier()
    if rank == 0 and meta is not None:
        tmp = paths["meta"].with_name(paths["meta"].name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, paths["meta"])
    return paths["model"]


def load_checkpoint(ckpt_dir: str | Path, step: int, device: torch.device, rank: int = 0) -> tuple[dict, dict | None, dict]:
    """(model_state, this rank's optim_state or None, meta). Raises FileNotFoundError naming the
    missing file."""
    paths = checkpoint_paths(ckpt_dir, step, rank)
    for key in ("model", "meta"):
        if not paths[key].is_file():
            raise FileNotFoundError(f"no checkpoint file {paths[key]}")
    model_state = torch.load(paths["model"], map_location=device, weights_only=True)
    optim_state = None
    if paths["optim"].is_file():
        optim_state = torch.load(paths["optim"], map_location=device, weights_only=True)
    meta = json.loads(paths["meta"].read_text())
    return model_state, optim_state, meta
