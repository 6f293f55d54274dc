"""A leg's log from the shell: which log a name means, and following it until the leg ends.

`find(exp_root, target, leg)` reads what `cockpit logs` is given, as `cockpit stop` reads its
arguments, among the dirs under exp_root:

- `DIR LEG`: the run LEG of that dir (a path, or a dir name under exp_root); DIR may also be an
  experiment id: then its newest dir where LEG has started;
- `EXP/LEG` (one word): the same as `EXP LEG`;
- `LEG` alone: the newest attempt of that leg, in any dir under exp_root.

A leg has started in a dir when the dir holds its state or its log. A leg run with repeats
(`dense.r0`, `dense.r1`) means its repeat that is running, else its last one that started; a repeat
may be named itself (`dense.r1`).

`follow(log, start, emit)` gives the log's lines from byte `start` as they are written, until the
leg ends: its state says done, failed or stopped (reconciled with the process table, or the
scheduler), or, for a log with no cockpit state (a manual run), the log does (its final lines,
a failure, or no growth for logs.summary.RUNNING_STALE_S). A leg not started yet is waited for.

Layer 1: imports expdir and the layer below (fsutil, logs, safetext, vocab).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cockpit import expdir, fsutil, logs, safetext
from cockpit.expdir import ExpDir, RunError
from cockpit.vocab import ENDED_STATUSES, RunStatus

POLL_S = 0.25  # how often the log is read for new bytes
STATE_EVERY_S = 1.0  # how often the leg's state is read (a Slurm leg's: the scheduler is asked)


@dataclass(frozen=True)
class LegLog:
    exp_dir: Path
    run: str  # the run whose log it is: a leg's own name, or one of its repeats

    @property
    def path(self) -> Path:
        return self.exp_dir / f"{self.run}.log"


def _started(d: ExpDir, run: str) -> bool:
    return run in d.states or fsutil.is_regular(d.log(run))


def _runs(d: ExpDir, leg: str) -> list[str]:
    """The runs that `leg` names in a dir: itself (a run of the dir, or a log there), else its repeats."""
    if leg in d.legs or fsutil.is_regular(d.log(leg)):
        return [leg]
    return d.runs(leg)


def _pick(d: ExpDir, leg: str) -> str | None:
    """The run of `leg` to show in a dir: one that is active, else the last that started."""
    runs = [r for r in _runs(d, leg) if _started(d, r)]
    active = [r for r in runs if (st := d.states.get(r)) is not None and st.active]
    return (active or runs or [None])[-1]


def _is_dir_ref(exp_root: Path, ref: str) -> bool:
    """Does `ref` name a dir (a path, or a dir name under exp_root), as expdir.find_dir reads it?"""
    p = Path(os.path.expanduser(ref))
    return fsutil.is_dir(p) or (not p.is_absolute() and fsutil.is_dir(exp_root / ref))


def find(exp_root: Path | str, target: str, leg: str | None = None) -> LegLog:
    """The log `cockpit logs TARGET [LEG]` means (see the module's docstring); RunError, one
    line, when there is none."""
    root = Path(exp_root)
    if leg is None:
        head, sep, tail = target.rstrip("/").rpartition("/")
        if sep and head and tail:
            target, leg = head, tail
        elif not target.strip() or "/" in target:
            raise RunError(
                f"no leg named in '{safetext.oneline(target)}': give EXP/LEG, DIR LEG or a leg name"
            )
    if leg is None:  # a leg name alone: its newest attempt anywhere under exp_root
        name = target
        for d in reversed(expdir.discover(root)):
            if (run := _pick(d, name)) is not None:
                return LegLog(d.path, run)
        raise RunError(
            f"no dir under {root} holds a run of leg '{safetext.oneline(name)}' (give EXP/LEG or DIR LEG)"
        )
    if not leg.strip() or "/" in leg or leg in (".", ".."):
        raise RunError(f"'{safetext.oneline(leg)}' is not a leg name")
    if not _is_dir_ref(root, target):
        mine = [d for d in expdir.discover(root) if d.experiment == target]
        for d in reversed(mine):
            if (run := _pick(d, leg)) is not None:
                return LegLog(d.path, run)
        if mine:
            raise RunError(
                f"no dir of experiment '{safetext.oneline(target)}' holds a run of leg "
                f"'{safetext.oneline(leg)}' ({len(mine)} dirs under {root})"
            )
    d = expdir.open_dir(expdir.find_dir(root, target))
    if (run := _pick(d, leg)) is not None:
        return LegLog(d.path, run)
    if runs := _runs(d, leg):  # planned, not started yet: its log is waited for
        return LegLog(d.path, runs[0])
    known = ", ".join(d.legs[:8]) + (", ..." if len(d.legs) > 8 else "") if d.legs else "none"
    raise RunError(
        f"{safetext.oneline(str(d.path))} has no leg '{safetext.oneline(leg)}' (its legs: "
        f"{safetext.oneline(known)})"
    )


def status(log: LegLog) -> tuple[bool, str]:
    """(has the leg ended, the word for where it stands): from its state, reconciled; without
    one, from its log (a manual run); a planned leg without a state has not started."""
    d = expdir.open_dir(log.exp_dir)
    st = d.states.get(log.run)
    if st is not None:
        return st.status in ENDED_STATUSES, str(st.status)
    if d.plan is not None and log.run in d.legs and not fsutil.is_regular(log.path):
        return False, "not started"
    s = logs.summarize(log.path)
    return s.status != RunStatus.RUNNING, str(s.status)


def follow(
    log: LegLog,
    start: int,
    emit: Callable[[str], object],
    poll_s: float = POLL_S,
    state_every_s: float = STATE_EVERY_S,
) -> str:
    """Give each new line of the log from byte `start` to `emit` until the leg ends (the lines
    written before its end included, the last one even without its newline); return the word
    for how it ended (done, failed, stopped, or a manual run's completed, failed, unknown)."""
    follower = logs.LogFollower(log.path, offset=start)
    checked = -state_every_s
    try:
        while True:
            for line in follower.poll():
                emit(line)
            if time.monotonic() - checked >= state_every_s:
                checked = time.monotonic()
                ended, word = status(log)
                if ended:
                    while lines := follower.poll():
                        for line in lines:
                            emit(line)
                    for line in follower.flush():
                        emit(line)
                    return word
            time.sleep(poll_s)
    finally:
        follower.close()
