"""Everything the cockpit reads from one log, fed line by line: `LogState`, and `StepTable`.

A LogState is an accumulator: any source feeds it lines (a follower's new lines, a file's, the
end of a big log) and it knows the tail window of step lines (for tail means and their spread;
step 0, the compile and warm-up, is never in it),
the last step, the moe line, every validation line, the final lines, the batch size, and the
failure evidence. A full parse keeps every step
line too, in a StepTable (for the per-step CSV and the plots).

Layer 0: imports only safetext, lazy (numpy, for a table), the line parsers and the failure tracker.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, NamedTuple

from cockpit import lazy, safetext
from cockpit.logs.failure import FailureTracker
from cockpit.logs.lines import FinalLine, MoeLine, SetupLine, StepLine, ValLine, parse_line, parse_step
from cockpit.vocab import DEFAULT_TAIL

STEP_FIELDS = (
    "step",
    "total",
    "pct",
    "loss",
    "bal",
    "lrm",
    "dt_ms",
    "tok_per_sec",
    "mfu",
    "epoch",
    "total_time_min",
    "eta_min",
    "drop_pct",
)
INT_FIELDS = ("step", "total", "epoch")  # the others are floats


class Column(NamedTuple):
    """One field of n step lines, as numpy arrays of n."""

    values: Any  # float64 (int64 for INT_FIELDS; object for an int past int64); 0 where absent
    present: Any  # bool: the line carries the field (a StepLine's attribute is not None)


class StepTable:
    """Step lines of a log in file order: the records (for the per-step CSV) and any field as a
    numpy column (for the plots). A full parse hands one over a chunk of the file at a time and
    empties it afterwards, so it holds a chunk's lines, whatever the log's size.
    """

    def __init__(self) -> None:
        self._recs: list[StepLine] = []

    def __len__(self) -> int:
        return len(self._recs)

    def clear(self) -> None:
        self._recs.clear()

    def append(self, rec: StepLine) -> None:
        self._recs.append(rec)

    def column(self, name: str) -> Column:
        """Every row's value of one field."""
        np = _numpy()
        raw = [getattr(r, name) for r in self._recs]
        n = len(raw)
        present = np.fromiter((v is not None for v in raw), bool, n)
        if name in INT_FIELDS and any(v is not None and not -(2**63) <= v < 2**63 for v in raw):
            values = np.array([0 if v is None else v for v in raw], object)  # int() reads any length
        else:
            kind = np.int64 if name in INT_FIELDS else np.float64
            values = np.fromiter((0 if v is None else v for v in raw), kind, n)
        return Column(values, present)

    def rows(self, start: int = 0) -> list[StepLine]:
        """Rows start.. as StepLine records."""
        return self._recs[start:]

    def as_lists(self) -> dict[str, list]:
        """Each field as a list of Python numbers, None where a line does not carry it."""
        return {name: [getattr(r, name) for r in self._recs] for name in STEP_FIELDS}


def _numpy() -> Any:
    return lazy.numpy()  # a LogState without a table (the TUI's followers) never loads numpy


class LogState:
    """Everything the cockpit reads from one log, fed line by line (any source, any chunking).

    `keep_steps` bounds the step lines kept for tables and plots (None keeps them all, for a
    full parse); the tail window for means is always the last `tail` step lines.
    """

    def __init__(self, tail: int = DEFAULT_TAIL, keep_steps: int | None = 0):
        self.tail = tail
        # the last `tail` step lines but step 0: a run shorter than the window has them all but that one
        self.window: deque[StepLine] = deque(maxlen=tail)
        # None keeps every step line in a StepTable (a full parse); N keeps the last N records
        self.table: StepTable | None = StepTable() if keep_steps is None else None
        self._recent: deque[StepLine] = deque(maxlen=keep_steps or 1)
        self.keep = keep_steps != 0
        self.steps_observed = 0
        self.first_step: int | None = None
        self.last: StepLine | None = None
        self.moe: MoeLine | None = None
        self.val: dict[str, ValLine] = {}  # the last line of each kind
        self.val_bpb: list[ValLine] = []  # every `Validation bpb` line, in order (one per eval: few)
        self.min_val_bpb: float | None = None  # the trainer's own `Minimum validation bpb` line
        self.batch_tokens: int | None = None  # tokens per optimizer step, from the setup lines
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
        rec2 = parse_line(line) if c in "smSVCPTM[" else None
        if rec2 is None:
            self.failure.feed(line)
        elif type(rec2) is StepLine:
            self._step(rec2)
        elif type(rec2) is MoeLine:
            self.moe = rec2
        elif type(rec2) is ValLine:
            self.val[rec2.name] = rec2
            if rec2.name == "Validation bpb":
                self.val_bpb.append(rec2)
        elif type(rec2) is SetupLine:
            self.batch_tokens = rec2.value
        elif type(rec2) is FinalLine:
            if rec2.kind == "peak_mem_mib":
                self.peak_mem_mib = rec2.value
            elif rec2.kind == "min_val_bpb":
                self.min_val_bpb = rec2.value
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
        if rec.step != 0:  # step 0 compiles and warms up: never in a tail mean, however short the run
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

    def tail_values(self, attr: str) -> tuple[float, ...]:
        """The tail window's values of one field, oldest first (lines without it left out)."""
        return tuple(v for r in self.window if (v := getattr(r, attr)) is not None)

    def tail_mean(self, attr: str) -> float | None:
        vals = [v for r in self.window if (v := getattr(r, attr)) is not None]
        if not vals:
            return None
        try:
            return math.fsum(vals) / len(vals)
        except (ValueError, OverflowError):  # inf and -inf (nan), or a sum past the float range (inf)
            return sum(vals) / len(vals)
