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
looks whole and is not. A file that cannot be written (a full disk) or read (truncated, not a
checkpoint) is a CheckpointError: one line naming the file, and no temporary file left behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch


class CheckpointError(Exception):
    """A checkpoint file that cannot be read or written: one line naming it. `exit_code`: 2 for
    a checkpoint given to resume from that is not one (bad input), 1 for a save that failed."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _why(e: BaseException) -> str:
    """An error in a few words on one line (torch's messages run over many). torch.save wraps a
    failed write in a RuntimeError that says only `unexpected pos`: the OSError under it says
    what happened (No space left on device)."""
    under = e
    while under is not None and not isinstance(under, OSError):
        under = under.__cause__ or under.__context__
    e = under or e
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def checkpoint_dir(checkpoint_root: str | Path, model_tag: str) -> Path:
    return Path(checkpoint_root).expanduser() / model_tag


def checkpoint_paths(ckpt_dir: str | Path, step: int, rank: int = 0) -> dict[str, Path]:
    d = Path(ckpt_dir)
    return {
        "model": d / f"model_{step:06d}.pt",
        "optim": d / f"optim_{step:06d}_rank{rank}.pt",
        "meta": d / f"meta_{step:06d}.json",
    }


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) beside `path`, then rename it into place; on any failure the temporary file is
    removed and a CheckpointError names `path`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save wraps a failed write (ENOSPC) in a RuntimeError
        try:
            tmp.unlink()
        except OSError:
            pass
        raise CheckpointError(f"cannot save checkpoint file {path}: {_why(e)}", exit_code=1) from None


def _atomic_torch_save(obj, path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: its OSError stays under torch's RuntimeError
            torch.save(obj, f)

    _atomic_write(path, write)


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
    try:
        paths["model"].parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"cannot make checkpoint dir {paths['model'].parent}: {_why(e)}", exit_code=1
        ) from None
    if rank == 0:
        _atomic_torch_save(model_state, paths["model"])
    if optim_state is not None:
        _atomic_torch_save(optim_state, paths["optim"])
    if barrier is not None:
        barrier()
    if rank == 0 and meta is not None:
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        _atomic_write(paths["meta"], lambda tmp: tmp.write_text(text))
    return paths["model"]


def load_checkpoint(
    ckpt_dir: str | Path, step: int, device: torch.device, rank: int = 0
) -> tuple[dict, dict | None, dict]:
    """(model_state, this rank's optim_state or None, meta). Raises FileNotFoundError naming the
    missing file, CheckpointError naming one that is not a checkpoint (truncated, garbage)."""
    paths = checkpoint_paths(ckpt_dir, step, rank)
    for key in ("model", "meta"):
        if not paths[key].is_file():
            raise FileNotFoundError(f"no checkpoint file {paths[key]}")

    def load(path: Path):
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # truncated zip, a pickle weights_only refuses, an I/O error
            raise CheckpointError(f"{path}: not a readable checkpoint ({_why(e)})", exit_code=2) from None

    model_state = load(paths["model"])
    optim_state = load(paths["optim"]) if paths["optim"].is_file() else None
    try:
        meta = json.loads(paths["meta"].read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
            raise ValueError("no step in it")
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(
            f"{paths['meta']}: not a readable checkpoint meta file ({_why(e)})", exit_code=2
        ) from None
    return model_state, optim_state, meta
