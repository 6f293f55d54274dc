"""The cockpit's words, each defined once: leg statuses, resume marks, run statuses, verdicts, metric
names, the tail window.

Three families of words describe a leg, each from its own source:

- `Status`: what a leg's state file says. The supervisor writes queued, waiting, running, done,
  failed or stopped; a client reading the file may conclude `unknown` (the leg is recorded as
  running and a process is there, but it cannot be proven to be the leg's).
- `Mark`: where a leg of the registry stands, joined over every dir it ran in and the registry's
  recorded figures (the resume state): the statuses above, plus recorded and pending.
- `RunStatus`: a run's status in a report. A log alone says completed, running, failed or unknown;
  a planned leg with no log is not run; a leg's state, where there is one, speaks for its run (with
  done said as completed, the word a report has always used).

The values are plain strings (`StrEnum`): they compare equal to the words in state files and JSON,
and print as the words themselves.

Layer 0: imports nothing from the cockpit.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A leg's status as its state file records it (`state/<leg>.json`)."""

    QUEUED = "queued"
    WAITING = "waiting"  # for idle GPUs (the preflight); the state says why
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    # Never written by a supervisor: a client's verdict on a leg recorded as running whose process
    # is there but cannot be proven the leg's. It may still run, and nothing may signal it.
    UNKNOWN = "unknown"


LEG_STATUSES = (Status.QUEUED, Status.WAITING, Status.RUNNING, Status.DONE, Status.FAILED, Status.STOPPED)
ACTIVE_STATUSES = (Status.QUEUED, Status.WAITING, Status.RUNNING)  # the supervisor may still act on it
ENDED_STATUSES = (Status.DONE, Status.FAILED, Status.STOPPED)  # the leg is over, one way or another


class Mark(StrEnum):
    """Where a leg of the registry stands, over every dir it ran in (the resume state)."""

    RECORDED = "recorded"  # ran elsewhere: its figures are in the registry
    DONE = "done"
    RUNNING = "running"
    QUEUED = "queued"
    WAITING = "waiting"
    FAILED = "failed"
    STOPPED = "stopped"
    PENDING = "pending"  # never ran here, nothing recorded
    UNKNOWN = "unknown"  # see Status.UNKNOWN


MARKS = tuple(Mark)
FINISHED_MARKS = (Mark.RECORDED, Mark.DONE)  # never launched again unless asked
ACTIVE_MARKS = (Mark.RUNNING, Mark.QUEUED, Mark.WAITING)
TODO_MARKS = (Mark.PENDING, Mark.FAILED, Mark.STOPPED)  # what a next launch would run
NOTED_MARKS = (Mark.FAILED, Mark.STOPPED, Mark.WAITING, Mark.UNKNOWN)  # marks whose note says why


class RunStatus(StrEnum):
    """A run's status in a report: from its log, its leg's state, or the registry."""

    COMPLETED = "completed"  # the log's final lines are there (a leg's done)
    RUNNING = "running"
    FAILED = "failed"
    UNKNOWN = "unknown"  # neither finished nor crashed, and no longer growing
    NOT_RUN = "not run"  # planned, no log yet
    RECORDED = "recorded"  # figures from the registry, not measured here


def run_status(status: str) -> str:
    """A leg's status as a report says it: done is completed; every other word stays."""
    return RunStatus.COMPLETED if status == Status.DONE else status


class Verdict(StrEnum):
    """Whether a delta is beyond the noise: its 95% interval excludes 0 (significant), or not."""

    SIGNIFICANT = "significant"
    WITHIN_NOISE = "within noise"
    NONE = "-"  # no interval: a figure without per-step samples or repeats (peak memory, total time)


class Source(StrEnum):
    """Where a report row's figures come from."""

    LOG = "log"  # measured from a log here
    RECORDED = "recorded"  # copied into the registry from a run elsewhere


# The tail window: the step lines a tail mean is over (the last ones, step 0 left out), when
# neither the registry's `tail` nor a plan says how many.
DEFAULT_TAIL = 50
# The final metrics of a run, in the report's column order: tail means of tok/sec, dt and MFU,
# then peak memory and total time. The registry's recorded figures use the same names, and
# figures.Figures holds them, then QUALITY's, under these names.
METRICS = ("tok_per_sec", "dt_ms", "mfu", "peak_mem_mib", "total_time_min")
# Which way is better, for colouring a delta: more tokens and MFU; less time and memory.
HIGHER_IS_BETTER = {
    "tok_per_sec": True,
    "dt_ms": False,
    "mfu": True,
    "peak_mem_mib": False,
    "total_time_min": False,
}
# The metrics measured at every step: their tail windows have a spread, so their deltas a verdict.
STEP_METRICS = ("tok_per_sec", "dt_ms", "mfu")
# Quality and routing, beside speed: the lowest and the last validation bpb, the last step's loss,
# and the tail means of the fraction of routed tokens dropped (fixed capacity) and the balance loss.
QUALITY = ("min_val_bpb", "last_val_bpb", "final_loss", "drop_pct", "bal")
# A run's series as a tracker names them (`cockpit export --tensorboard`'s tags): upstream nanochat's
# wandb keys and units where it logs the figure, the same style for the rest. The trainer logs the
# same keys to wandb (nanochat/tracker.py, which cannot import them from here).
# step line field -> (tag, factor from the log's unit to the tag's).
TRACKER_SERIES = {
    "loss": ("train/loss", 1.0),
    "lrm": ("train/lrm", 1.0),
    "dt_ms": ("train/dt", 0.001),  # seconds, as upstream logs dt
    "tok_per_sec": ("train/tok_per_sec", 1.0),
    "mfu": ("train/mfu", 1.0),
    "bal": ("train/bal", 1.0),
    "drop_pct": ("train/drop_pct", 1.0),
    "total_time_min": ("total_training_time", 60.0),  # seconds, as upstream logs it
}
TRACKER_VAL_BPB = "val/bpb"  # each `Step N | Validation bpb: X` line
