"""A leg's progress in words, the same in `cockpit status` and the terminal app.

The figures are a `LegSummary`'s (summary.py): the step and percent of the log's last step line,
as the log prints them (`step 00042/00280 (15.00%)` reads `42/280` and `15.00%`, never 100% before
the final lines); the ETA the trainer printed (`eta: 2.6m`), else the remaining steps at the tail
mean dt, as `h:mm:ss`; and how many steps the tail means rest on, said whenever the run has fewer
than the tail window (step 0 is never among them).

Layer 0: imports nothing from the cockpit but the log summary.
"""

from __future__ import annotations

import math

from cockpit.logs.summary import LegSummary

NONE = "-"


def step_text(step: int | None, total: int | None) -> str:
    """`42/280` (`42/?` without a total), `-` before the first step line."""
    if step is None:
        return NONE
    return f"{step}/{total if total else '?'}"


def pct_text(pct: float | None) -> str:
    """`15.00%`, with the log's two decimals."""
    return NONE if pct is None else f"{pct:.2f}%"


def eta_text(minutes: float | None) -> str:
    """`0:02:36` (hours unbounded: `27:46:40`), `-` when there is none."""
    if minutes is None or not math.isfinite(minutes) or minutes < 0:
        return NONE
    seconds = round(minutes * 60)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def short_tail(tail_n: int, tail: int) -> bool:
    """Do the tail means rest on fewer steps than the window (a short run, or one still filling it)?"""
    return 0 < tail_n < tail


def tail_text(tail_n: int, tail: int) -> str:
    """`tail 39 of 50 steps, step 0 left out` when the run has fewer than the window; "" otherwise."""
    return f"tail {tail_n} of {tail} steps, step 0 left out" if short_tail(tail_n, tail) else ""


def line(s: LegSummary, tail: int) -> str:
    """`step 42/280 (15.00%), loss 6.1235, 806,400 tok/s, ETA 0:02:36`: a running leg's progress.
    tok/s is the tail mean, said with how many steps it rests on while the window is not full."""
    if s.last_step is None:
        return "no step lines yet"
    parts = [
        f"step {step_text(s.last_step, s.total_steps)}"
        + (f" ({pct_text(s.pct)})" if s.pct is not None else "")
    ]
    if s.last_loss is not None:
        parts.append(f"loss {s.last_loss:.4f}")
    if s.tok_per_sec is not None:
        parts.append(
            f"{s.tok_per_sec:,.0f} tok/s"
            + (f" ({tail_text(s.tail_n, tail)})" if short_tail(s.tail_n, tail) else "")
        )
    else:
        parts.append("tok/s n/a")
    parts.append(f"ETA {eta_text(s.eta_min)}" if s.eta_min is not None else "ETA n/a")
    return ", ".join(parts)
