"""Everything the cockpit reads from one log, fed line by line: `LogState`, and `StepTable`.

A LogState is an accumulator: any source feeds it lines (a follower's new lines, a file's, the
end of a big log) and it knows the tail window of step lines (for tail means), the last step,
the moe, validation and final lines, and the failure evidence. A full parse keeps every step
line too, as the columns of a StepTable (for the per-step CSV and the plots).

Layer 0: imports only the log's line parsers and the failure tracker.
"""

from __future__ import annotations

import math
from collections import deque

from cockpit import safetext
from cockpit.logs.failure import FailureTracker
from cockpit.logs.lines import FinalLine, MoeLine, StepLine, ValLine, parse_line, parse_step

STEP_FIELDS = (
    "step", "total", "pct", "loss", "bal", "lrm", "dt_ms", "tok_per_sec", "mfu", "epoch",
    "total_time_min", "eta_min", "drop_pct",
)


class StepTable:
    """Every step line of a log as columns (lists, one per StepLine field): what a full parse
    keeps for the per-step CSV and the plots, without one object per line."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in STEP_FIELDS}
        self.extra: dict[int, dict[str, str]] = {}  # row -> unknown fields, for the rows that have any

    def __len__(self) -> int:
        return len(self.cols["step"])

    def clear(self) -> None:
        for col in self.cols.values():
            col.clear()
        self.extra.clear()

    def append(self, rec: StepLine) -> None:
        if rec.extra:
            self.extra[len(self)] = rec.extra
        for name, col in self.cols.items():
            col.append(getattr(rec, name))

    def extend(self, cols: dict[str, list], n: int) -> None:
        for name, col in self.cols.items():
            values = cols.get(name)
            col.extend(values if values is not None else [None] * n)

    def row(self, i: int) -> StepLine:
        rec = StepLine(**{name: col[i] for name, col in self.cols.items()})
        if i in self.extra:
            rec.extra = dict(self.extra[i])
        return rec

    def rows(self, start: int = 0) -> list[StepLine]:
        return [self.row(i) for i in range(start, len(self))]


class LogState:
    """Everything the cockpit reads from one log, fed line by line (any source, any chunking).

    `keep_steps` bounds the step lines kept for tables and plots (None keeps them all, for a
    full parse); the tail window for means is always the last `tail` step lines.
    """

    def __init__(self, tail: int = 50, keep_steps: int | None = 0):
        self.tail = tail
        self.window: deque[StepLine] = deque(maxlen=tail)
        # None keeps every step line, as columns (a full parse); N keeps the last N records
        self.table: StepTable | None = StepTable() if keep_steps is None else None
        self._recent: deque[StepLine] = deque(maxlen=keep_steps or 1)
        self.keep = keep_steps != 0
        self.steps_observed = 0
        self.first_step: int | None = None
        self.last: StepLine | None = None
        self.moe: MoeLine | None = None
        self.val: dict[str, ValLine] = {}
        self.peak_mem_mib: float | None = None
        self.total_time_min: float | None = None
        self.finished = False
        self.failure = FailureTracker()
        self.lines_seen = 0

    def feed(self, line: str) -> None:
        self.lines_seen += 1
        if "\x1b" in line:  # lines from a LineSplitter have none left; others may
            line = safetext.strip_escapes(line)
        c = line[:1]
        if c == "s" and line.startswith("step "):
            rec = parse_step(line)
            if rec is not None:
                self._step(rec)
                return
        rec2 = parse_line(line) if c in "smSVCPT[" else None
        if rec2 is None:
            self.failure.feed(line)
        elif type(rec2) is StepLine:
            self._step(rec2)
        elif type(rec2) is MoeLine:
            self.moe = rec2
        elif type(rec2) is ValLine:
            self.val[rec2.name] = rec2
        elif type(rec2) is FinalLine:
            if rec2.kind == "peak_mem_mib":
                self.peak_mem_mib = rec2.value
            else:
                self.total_time_min = rec2.value
                self.finished = True
            self.failure.went_on()  # a traceback before the final lines did not stop training

    def feed_many(self, lines: list[str]) -> None:
        for line in lines:
            self.feed(line)

    def _step(self, rec: StepLine) -> None:
        self.failure.went_on()
        if self.first_step is None:
            self.first_step = rec.step
        self.steps_observed += 1
        self.last = rec
        self.window.append(rec)
        if self.table is not None:
            self.table.append(rec)
        elif self.keep:
            self._recent.append(rec)

    @property
    def steps(self) -> list[StepLine] | deque[StepLine]:
        """The step lines kept: all of them (full parse), or the last keep_steps."""
        if self.table is not None:
            return self.table.rows()
        return self._recent if self.keep else deque()

    @property
    def failed(self) -> bool:
        return self.failure.seen

    def tail_mean(self, attr: str) -> float | None:
        vals = [v for r in self.window if (v := getattr(r, attr)) is not None]
        if not vals:
            return None
        try:
            return math.fsum(vals) / len(vals)
        except (ValueError, OverflowError):  # inf and -inf (nan), or a sum past the float range (inf)
            return sum(vals) / len(vals)
