"""
The experiment tracker: wandb, as upstream nanochat uses it, when `--run` names a run.

`--run dummy` (the default) tracks nothing and never imports wandb; nor does any rank but 0.
Otherwise rank 0 starts a wandb run (project `nanochat` as upstream, or `$WANDB_PROJECT`; the
run's flags as its config) and logs the step series under upstream's keys. wandb reads its own
settings from the environment (`WANDB_MODE=offline`, `WANDB_DIR`, ...): nothing here overrides
them. Without wandb installed, or when `wandb.init` fails (not logged in, say), one line on
stderr says the run is not tracked and why, and training goes on: a tracker is a convenience,
and a queue of legs should not lose a night to one.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol

DUMMY_RUN = "dummy"
DEFAULT_PROJECT = "nanochat"  # upstream's project name
INSTALL = "pip install wandb (or: pip install -e '.[wandb]')"

# The step series, keyed as upstream nanochat logs them to wandb, in the units it logs them in
# (seconds for dt and the training time, percent for MFU); bal and drop_pct are this trainer's
# MoE figures in the same style. Each is the step line's field of the same meaning.
LOSS = "train/loss"  # the step line's `loss` (debiased EMA)
LRM = "train/lrm"
DT = "train/dt"  # seconds (the line's `dt` is in ms)
TOK_PER_SEC = "train/tok_per_sec"
MFU = "train/mfu"  # percent of bf16 peak, as the line's `bf16_mfu`
BAL = "train/bal"  # MoE only
DROP_PCT = "train/drop_pct"  # fixed capacity only
TOTAL_TIME = "total_training_time"  # seconds (the line's `total time` is in minutes)
STEP_KEYS = (LOSS, LRM, DT, TOK_PER_SEC, MFU, BAL, DROP_PCT, TOTAL_TIME)
VAL_BPB = "val/bpb"  # each `Step N | Validation bpb: X` line
STEP = "step"  # upstream also logs the step as a value of its own, the x axis of its charts


class Tracker(Protocol):
    def log(self, data: dict[str, Any], step: int) -> None: ...

    def finish(self) -> None: ...


class NoTracker:
    """Tracks nothing, with a tracker's methods (upstream's DummyWandb)."""

    def log(self, data: dict[str, Any], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    """A started wandb run."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, data: dict[str, Any], step: int) -> None:
        self.run.log({STEP: step, **data}, step=step)

    def finish(self) -> None:
        self.run.finish()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_tracker(run: str, config: dict[str, Any], master: bool) -> Tracker:
    """The tracker of this process: wandb's run `run` on the master rank, else NoTracker."""
    if run == DUMMY_RUN or not master:
        return NoTracker()
    try:
        import wandb  # function-level: heavy, optional, and only for a named run on rank 0
    except ImportError:
        _say(f"wandb is not installed: --run {run} is not tracked (training goes on); to track it: {INSTALL}")
        return NoTracker()
    project = os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    try:
        started = wandb.init(project=project, name=run, config=config)
    except Exception as e:  # wandb's own errors (no API key, no network in online mode) have no common base
        # on one line, whole enough to act on (a settings error names the setting on its 2nd line)
        reason = (
            "; ".join(part.strip() for part in str(e).splitlines() if part.strip())[:400] or type(e).__name__
        )
        _say(f"wandb.init failed: {reason}: --run {run} is not tracked (training goes on); "
             f"WANDB_MODE=offline tracks without a login")  # fmt: skip
        return NoTracker()
    return WandbTracker(started)
