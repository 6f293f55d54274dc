"""
Checkpoints: <checkpoint_root>/<model_tag>/
    model_{step:06d}.pt    model state dict (uncompiled names)
    optim_{step:06d}.pt    optimizer state dict (identical on every rank: gradients are averaged)
    meta_{step:06d}.json   model config, trainer args, step, loss, and the loop state a resume needs
`step` counts completed optimizer steps, so resuming from step N runs step N next.
Files are written to a temporary name and renamed, so a killed run never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def checkpoint_dir(checkpoint_root: str | Path, model_tag: str) -> Path:
    return Path(checkpoint_root).expanduser() / model_tag


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model_state: dict,
    optim_state: dict | None,
    meta: dict,
) -> Path:
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(model_state, d / f"model_{step:06d}.pt")
    if optim_state is not None:
        _atomic_torch_save(optim_state, d / f"optim_{step:06d}.pt")
    meta_path = d / f"meta_{step:06d}.json"
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, meta_path)
    return d / f"model_{step:06d}.pt"


def checkpoint_paths(ckpt_dir: str | Path, step: int) -> dict[str, Path]:
    d = Path(ckpt_dir)
    return {
        "model": d / f"model_{step:06d}.pt",
        "optim": d / f"optim_{step:06d}.pt",
        "meta": d / f"meta_{step:06d}.json",
    }


def load_checkpoint(ckpt_dir: str | Path, step: int, device: torch.device) -> tuple[dict, dict | None, dict]:
    """(model_state, optim_state or None, meta). Raises FileNotFoundError naming the missing file."""
    paths = checkpoint_paths(ckpt_dir, step)
    for key in ("model", "meta"):
        if not paths[key].is_file():
            raise FileNotFoundError(f"no checkpoint file {paths[key]}")
    model_state = torch.load(paths["model"], map_location=device, weights_only=True)
    optim_state = None
    if paths["optim"].is_file():
        optim_state = torch.load(paths["optim"], map_location=device, weights_only=True)
    meta = json.loads(paths["meta"].read_text())
    return model_state, optim_state, meta
