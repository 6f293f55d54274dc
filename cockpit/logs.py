"""Trainer logs: follow a growing file, parse its lines, summarize a leg from its tail.

A leg's log is the combined stdout+stderr of `torchrun ... -m nanochat.base_train`. The lines
that matter (DESIGN.md, "Log lines"):

    step 00042/00280 (15.00%) | loss: 6.123456 | bal: 1.0123 | lrm: 1.00 | dt: 650.67ms | ...
    moe step 00042 | drop: 1.20% | load: 0.131,0.122,... | bal: 1.0023
    Step 00250 | Validation bpb: 0.8123
    Peak memory usage: 18987.83MiB
    Total training time: 2.97m

plus whatever else torch, torchrun and Python print, including a traceback and torchrun's
failure summary when a leg crashes. Fields are read by name in any order; anything unknown is
kept aside or ignored, never fatal. The same code reads this trainer, upstream nanochat
(`bf16_mfu:`, older `mfu:`) and the user's fork (`| bal: 24.0000` after `loss`).

Three layers, each usable alone:
- `LineSplitter`: bytes in any chunking -> complete text lines (`\\r` and `\\n` end a line,
  terminal escape sequences such as colour codes are dropped: a green step line is a step line).
- `parse_step` / `parse_line`: one line -> a typed record, or None.
- `LogState`: an accumulator fed with lines (the follower's or a file's) that knows the tail
  window, the final lines and the failure evidence; `summarize(path)` builds one from the
  end of a file without reading all of it.

Memory is bounded whatever the file holds (a 5 GB log, one line without a newline, a sparse
file of zeros): a summary reads the file backwards in chunks and keeps at most the tail window's
step lines and TAIL_TEXT_BYTES of text; a full parse streams its step columns to a callback
chunk by chunk (`parse_file(on_steps=...)`) when the caller does not want them all at once.
"""

from __future__ import annotations

import math
import operator
import os
import re
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path

from cockpit import fsutil, safetext
from cockpit.vocab import RunStatus

MAX_LINE_BYTES = 64 * 1024  # a longer line is cut here: memory stays bounded whatever the file holds
READ_CHUNK = 1 << 20
SMALL_LOG_BYTES = 256 << 10  # a log up to this size is parsed whole (exact step count; 280 steps are ~60 KB)
HEAD_SCAN_BYTES = 4 << 20  # how far into a big log its first step line is looked for
TAIL_TEXT_BYTES = 8 << 20  # a big log's summary parses at most this much text besides its step lines
FAILURE_LINES = 8  # how many lines of a traceback are kept as the failure reason
RUNNING_STALE_S = 300.0  # a log without final lines that grew this recently counts as running


# ----------------------------------------------------------------------------------------------
# records


@dataclass(slots=True)
class StepLine:
    """One `step ...` line. Fields the line does not carry stay None; unknown ones go to extra."""

    step: int
    total: int | None = None
    pct: float | None = None
    loss: float | None = None
    bal: float | None = None
    lrm: float | None = None
    dt_ms: float | None = None
    tok_per_sec: float | None = None
    mfu: float | None = None
    epoch: int | None = None
    total_time_min: float | None = None
    eta_min: float | None = None
    drop_pct: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class MoeLine:
    """The trainer's routing line: `moe step 00042 | drop: 1.20% | load: a,b,... | bal: 1.0023`."""

    step: int
    drop_pct: float | None = None
    load: tuple[float, ...] = ()
    bal: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ValLine:
    """An evaluation line: `Step 00250 | Validation bpb: 0.8123` (also CORE metric, val loss)."""

    step: int | None
    name: str
    value: float


@dataclass(slots=True)
class FinalLine:
    """`Peak memory usage: ...MiB` (kind "peak_mem_mib") or `Total training time: ...m`."""

    kind: str
    value: float


# ----------------------------------------------------------------------------------------------
# numbers with units


def _num(text: str) -> float | None:
    """A number as the trainer prints it: `806,400`, `9.76`, `1.20%`, `650.67ms`, `nan`."""
    try:
        return float(text)
    except ValueError:
        pass
    t = text.strip().replace(",", "").replace("_", "")
    end = len(t)
    while end and not (t[end - 1].isdigit() or t[end - 1] == "."):
        end -= 1
    try:
        return float(t[:end] if end else t)
    except ValueError:
        return None


def _ms(text: str) -> float | None:
    """A duration in milliseconds: `650.67ms`, `0.65s`."""
    t = text.strip()
    if t.endswith("ms"):
        return _num(t[:-2])
    if t.endswith("s"):
        v = _num(t[:-1])
        return None if v is None else v * 1000.0
    return _num(t)


def _minutes(text: str) -> float | None:
    """A duration in minutes: `2.97m`, `45s`, `1.5h`."""
    t = text.strip()
    scale = 1.0
    if t.endswith("h"):
        scale, t = 60.0, t[:-1]
    elif t.endswith("s") and not t.endswith("ms"):
        scale, t = 1 / 60.0, t[:-1]
    elif t.endswith("m"):
        t = t[:-1]
    v = _num(t)
    return None if v is None else v * scale


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        v = _num(text)
        return None if v is None or not math.isfinite(v) else int(v)  # nan, inf: not an int


# field name in the log -> (StepLine attribute, converter)
_STEP_FIELDS = {
    "loss": ("loss", _num),
    "bal": ("bal", _num),
    "lrm": ("lrm", _num),
    "dt": ("dt_ms", _ms),
    "tok/sec": ("tok_per_sec", _num),
    "bf16_mfu": ("mfu", _num),
    "mfu": ("mfu", _num),
    "epoch": ("epoch", _int),
    "total time": ("total_time_min", _minutes),
    "eta": ("eta_min", _minutes),
    "drop": ("drop_pct", _num),
}


# ----------------------------------------------------------------------------------------------
# line parsers


def _strip_rank_prefix(line: str) -> str:
    """torchrun may prefix worker output (`[rank0]: `, `[default0]:`); the parser looks past it."""
    if line[:1] == "[":
        close = line.find("]:")
        if 0 < close < 32:
            rest = line[close + 2 :]
            return rest[1:] if rest[:1] == " " else rest  # one space after the prefix; indentation stays
    return line


def parse_step(line: str) -> StepLine | None:
    """A `step NNNNN/TTTTT (P%) | name: value | ...` line, or None for any other line."""
    if not line.startswith("step "):
        if line[:1] != "[":
            return None
        line = _strip_rank_prefix(line)
        if not line.startswith("step "):
            return None
    parts = line.rstrip().split(" | ")
    head = parts[0][5:].split()
    if not head:
        return None
    num, _, tot = head[0].partition("/")
    try:
        rec = StepLine(step=int(num))
    except ValueError:
        return None  # "step function ..." or other prose that starts with "step "
    if tot:
        try:
            rec.total = int(tot)
        except ValueError:
            pass
    if len(head) > 1 and head[1].startswith("(") and head[1].endswith("%)"):
        rec.pct = _num(head[1][1:-2])
    fields = _STEP_FIELDS
    for part in parts[1:]:
        name, sep, value = part.partition(": ")
        if not sep:
            continue
        known = fields.get(name)
        if known is None:
            rec.extra[name.strip()] = value.strip()
            continue
        v = known[1](value)
        if v is None:
            rec.extra[name] = value.strip()
        else:
            setattr(rec, known[0], v)
    return rec


def parse_moe(line: str) -> MoeLine | None:
    """`moe step 00042 | drop: 1.20% | load: 0.131,0.122 | bal: 1.0023`, or None."""
    if not line.startswith("moe step "):
        return None
    parts = line.rstrip().split(" | ")
    step = _int(parts[0][9:].strip())
    if step is None:
        return None
    rec = MoeLine(step=step)
    for part in parts[1:]:
        name, sep, value = part.partition(": ")
        if not sep:
            continue
        if name == "drop":
            rec.drop_pct = _num(value)
        elif name == "bal":
            rec.bal = _num(value)
        elif name == "load":
            try:
                rec.load = tuple(map(float, value.split(",")))
                continue
            except ValueError:
                loads = [_num(x) for x in value.split(",")]
            if all(x is not None for x in loads):
                rec.load = tuple(loads)  # type: ignore[arg-type]
            else:
                rec.extra[name] = value.strip()
        else:
            rec.extra[name.strip()] = value.strip()
    return rec


_VAL_NAMES = ("Validation bpb", "Validation loss", "val bpb", "val loss", "CORE metric")


def parse_val(line: str) -> ValLine | None:
    """`Step 00250 | Validation bpb: 0.8123` (upstream nanochat), also CORE metric and val loss."""
    step = None
    body = line
    if line.startswith("Step "):
        head, sep, body = line.partition(" | ")
        if not sep:
            return None
        step = _int(head[5:].strip())
    for name in _VAL_NAMES:
        if body.startswith(name + ":"):
            v = _num(body[len(name) + 1 :].strip())
            return None if v is None else ValLine(step=step, name=name, value=v)
    return None


def parse_final(line: str) -> FinalLine | None:
    """`Peak memory usage: 18987.83MiB` or `Total training time: 2.97m`, or None."""
    if line.startswith("Peak memory usage:"):
        text = line[18:].strip()
        scale = 1024.0 if text.endswith("GiB") else 1.0
        v = _num(text)
        return None if v is None else FinalLine("peak_mem_mib", v * scale)
    if line.startswith("Total training time:"):
        v = _minutes(line[20:].strip())
        return None if v is None else FinalLine("total_time_min", v)
    return None


def parse_line(line: str) -> StepLine | MoeLine | ValLine | FinalLine | None:
    """Any line the cockpit knows, typed; None for everything else (never raises)."""
    c = line[:1]
    if c == "s":
        return parse_step(line)
    if c == "[":
        inner = _strip_rank_prefix(line)
        return parse_line(inner) if inner is not line and inner[:1] != "[" else None
    if c == "m":
        return parse_moe(line)
    if c in "SVC":
        return parse_val(line)
    if c in "PT":
        return parse_final(line)
    return None


# ----------------------------------------------------------------------------------------------
# failure evidence: a Python traceback, torchrun's failure summary


# argparse's `%(prog)s: error: %(message)s`: `base_train.py: error: unrecognized arguments: --bogus 1`
_ARGPARSE_ERROR = re.compile(r"[\w.\-]+: error: \S")


class FailureTracker:
    """Spots a Python traceback, an argparse error or torchrun's failure summary and keeps its last lines.

    An argparse error (`usage: base_train.py [-h] ...` then `base_train.py: error: ...`, exit
    code 2; this trainer prints the error line alone) has no traceback: its error line is the
    cause, kept with the usage line right above it when there is one.

    The first traceback is the root cause (a worker's; torchrun's own comes after it), so its
    last lines are kept as the reason, and `error_line` prefers a worker's exception line
    (`torch.OutOfMemoryError: ...`) over torchrun's `ChildFailedError`. The owner clears the
    evidence when training goes on after it (a non-fatal traceback, a restart).
    """

    def __init__(self) -> None:
        self.seen = False
        self.lines: deque[str] = deque(maxlen=FAILURE_LINES)
        self.exceptions: list[str] = []
        self.root_cause: list[str] = []
        self._in_tb = False
        self._captured = False  # the first traceback is complete: later ones are not kept
        self._in_root = False
        self._usage: str | None = None  # the last `usage:` line (an argparse error follows it)

    def clear(self) -> None:
        self.__init__()

    def went_on(self) -> None:
        """Training went on (a step or final line): nothing before it is the cause. Afterwards
        the tracker is always fresh, so a bulk parse may call this once after a run of steps."""
        if self.seen or self._usage is not None:
            self.clear()

    def feed(self, line: str) -> None:
        body = _strip_rank_prefix(line)
        if self._in_root:
            if body.startswith("====="):
                self._in_root = False
            elif body.strip() and len(self.root_cause) < 16:
                self.root_cause.append(body.strip())
            return
        if body.startswith("Traceback (most recent call last)"):
            self.seen = True
            self._in_tb = True
            if not self._captured:
                self.lines.append(line.rstrip())
            return
        if body.startswith("Root Cause (first observed failure)"):
            self.seen = True
            self._in_root = True
            self.root_cause = []
            return
        if self._in_tb:
            if not self._captured:
                self.lines.append(line.rstrip())
            if body[:1] not in " \t" and not body.startswith(("During handling", "The above exception")):
                self._in_tb = False  # the exception line closes a traceback
                self._captured = True
                self._exception(body.strip())
            return
        if body.startswith("usage: "):
            self._usage = line.rstrip()
            return
        if _ARGPARSE_ERROR.match(body):
            self.seen = True
            if not self._captured:
                self.lines.extend([self._usage, line.rstrip()] if self._usage else [line.rstrip()])
                self._captured = True
            self._usage = None
            self._exception(body.strip())
            return
        if self._usage is not None and body[:1] not in " \t":
            self._usage = None  # not the usage block's continuation: the usage line was not an error's
        if "ChildFailedError" in body or "failed (exitcode:" in body:
            self.seen = True
            self._exception(body.strip())

    def _exception(self, text: str) -> None:
        if len(self.exceptions) < 8:
            self.exceptions.append(text)

    @property
    def error_line(self) -> str | None:
        """The line that says what went wrong: a worker's exception before torchrun's."""
        for text in self.exceptions:
            if "ChildFailedError" not in text and "failed (exitcode:" not in text:
                return text
        return self.exceptions[0] if self.exceptions else None

    @property
    def reason(self) -> list[str]:
        out = list(self.lines)
        if not out and self.error_line:
            out.append(self.error_line)
        out += [ln for ln in self.root_cause if ln.startswith(("exitcode", "rank", "host"))]
        return out


# ----------------------------------------------------------------------------------------------
# the accumulator


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
        return math.fsum(vals) / len(vals) if vals else None


# ----------------------------------------------------------------------------------------------
# bytes -> lines


class LineSplitter:
    """Bytes in any chunking -> the same complete lines.

    `\\r` and `\\n` both end a line (progress bars redraw with `\\r`); empty lines are dropped;
    invalid UTF-8 becomes U+FFFD; a line longer than MAX_LINE_BYTES is cut there, so a file
    with no newline at all costs bounded memory.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES):
        self.max_line = max_line
        self.partial = b""
        self.overflow = False  # the partial line hit max_line: drop bytes until its end

    def feed(self, data: bytes) -> list[str]:
        # one decode for the whole chunk: a line holds no b"\n", so none is split or merged
        lines = self.feed_bytes(data)
        return b"\n".join(lines).decode("utf-8", "replace").split("\n") if lines else []

    def feed_bytes(self, data: bytes) -> list[bytes]:
        """The complete lines in `data`, still bytes: the full parse decodes only the lines it
        does not parse in bulk; feed() decodes them all."""
        if b"\r" in data:
            data = data.replace(b"\r", b"\n")
        cut = data.rfind(b"\n")
        if cut < 0:
            self._hold(data)
            return []
        head, rest = data[: cut + 1], data[cut + 1 :]
        out: list[bytes] = []
        if self.partial or self.overflow:
            first = head.find(b"\n")
            if not self.overflow:
                self.partial += head[:first][: self.max_line - len(self.partial)]
            if self.partial:
                out.append(self.partial)
            self.partial, self.overflow = b"", False
            head = head[first + 1 :]
        blines = head.split(b"\n")
        if len(head) > self.max_line and max(map(len, blines)) > self.max_line:
            blines = [b[: self.max_line] for b in blines]
        out += filter(None, blines)
        self._hold(rest)
        if b"\x1b" in head or (out and b"\x1b" in out[0]):
            out = [x for b in out if (x := safetext.strip_escapes_bytes(b))]
        return out

    def flush(self) -> list[str]:
        """The held partial line as a line (end of file, or the writer is gone)."""
        line, self.partial, self.overflow = safetext.strip_escapes_bytes(self.partial), b"", False
        return [line.decode("utf-8", "replace")] if line else []

    def _hold(self, data: bytes) -> None:
        if self.overflow or not data:
            return
        room = self.max_line - len(self.partial)
        if len(data) >= room:
            self.partial += data[:room]
            self.overflow = True
        else:
            self.partial += data


# ----------------------------------------------------------------------------------------------
# following a growing file


class LogFollower:
    """Reads only the new bytes of a growing log at each `poll()`.

    Holds a partial last line until its newline; starts over when the file is truncated or
    replaced (another inode at the path); returns at most `max_bytes` worth of lines per poll
    (the next poll goes on), so memory is bounded whatever the file size.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int = 0, max_bytes: int = 8 << 20):
        self.path = Path(path)
        self.offset = offset
        self.max_bytes = max_bytes
        self.splitter = LineSplitter()
        self._file = None
        self._ino: tuple[int, int] | None = None
        self.resets = 0  # how many times truncation or replacement made it start over

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:
        self.close()

    def _reset(self) -> None:
        self.close()
        self.offset = 0
        self.splitter = LineSplitter()
        self.resets += 1

    def poll(self) -> list[str]:
        """Complete new lines since the last poll ([] when nothing new or no file yet)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        ino = (st.st_dev, st.st_ino)
        if self._ino is not None and ino != self._ino:
            self._reset()  # replaced: a new file at the path
        elif st.st_size < self.offset:
            self._reset()  # truncated
        if self._file is None:
            try:
                self._file = fsutil.open_read(self.path)  # kept open between polls; a FIFO is refused
            except OSError:
                return []
            self._ino = ino
        if st.st_size <= self.offset:
            return []
        self._file.seek(self.offset)
        data = self._file.read(min(self.max_bytes, st.st_size - self.offset))
        self.offset += len(data)
        return self.splitter.feed(data)

    def flush(self) -> list[str]:
        return self.splitter.flush()


def _chunks(f, chunk: int = READ_CHUNK):
    """The file's bytes in chunks, from where it is; a hole of a sparse file (zeros, no line end
    in it) is given as just enough zeros to make the line it falls in as long as a line gets."""
    fd = f.fileno()
    size = os.fstat(fd).st_size
    pos = f.tell()
    while True:
        data_at = fsutil.next_data(fd, pos, size)
        if data_at - pos > 2 * chunk:
            yield bytes(MAX_LINE_BYTES + 1)
            pos = data_at
            f.seek(pos)
        data = f.read(chunk)
        if not data:
            return
        pos += len(data)
        yield data


def read_lines(path: str | os.PathLike[str], start: int = 0, chunk: int = READ_CHUNK):
    """Every line of a file from byte `start`, in chunks (a full parse); partial last line included."""
    splitter = LineSplitter()
    with fsutil.open_read(path) as f:
        f.seek(start)
        while data := f.read(chunk):
            yield from splitter.feed(data)
    yield from splitter.flush()


def parse_file(
    path: str | os.PathLike[str], tail: int = 50, keep_steps: int | None = None, on_steps=None
) -> LogState:
    """A full parse of a log: with keep_steps=None every step line is kept, as columns.

    Step lines are parsed in bulk (see `_bulk_feed`): the same records as `parse_step` line
    by line, several times faster; anything unusual falls back to the line-by-line parser.
    `on_steps(table)`: called with the step lines of each chunk read (a StepTable), which is
    emptied afterwards, so the memory a parse holds is one chunk's, whatever the file's size.
    """
    if on_steps is not None:
        keep_steps = None
    state = LogState(tail=tail, keep_steps=keep_steps)
    splitter = LineSplitter()
    bulk = state.table is not None and _numpy() is not None
    table = state.table

    def hand_over() -> None:
        if on_steps is not None and table is not None and len(table):
            on_steps(table)
            table.clear()

    with fsutil.open_read(path) as f:
        for data in _chunks(f):
            if bulk:
                _bulk_feed(state, splitter.feed_bytes(data))
            else:
                state.feed_many(splitter.feed(data))
            hand_over()
    for line in splitter.flush():
        if parse_step(line) is None:  # a cut step line waits for its newline (see _state_of)
            state.feed(line)
    hand_over()
    return state


# ----------------------------------------------------------------------------------------------
# bulk parsing of step lines (full parses)
#
# Lines of one layout share their text once digits and commas are deleted (the "key":
# `step / (.%) | loss: . | lrm: . | dt: .ms | ...`). For each key, the lines' numbers are read at
# once by numpy from the joined text with every other character blanked, and the key says
# which column is which field. A key the per-line parser would read differently (unknown
# fields, odd units, a number count that does not add up) sends its lines to parse_step.

_KEY_DELETE = b"0123456789,"  # dots stay: "42.5" and "42" get different keys
_NUM_TABLE = bytes(c if c in b"0123456789.-+" else 32 for c in range(256))
_SCALES = {  # converter -> unit residue -> multiplier, exactly as the converters apply them
    _num: {b"": None, b"%": None},
    _ms: {b"": None, b"ms": None, b"s": 1000.0},
    _minutes: {b"": 1.0, b"m": 1.0, b"s": 1 / 60.0, b"h": 60.0},
    _int: {b"": None},
}
_INT_FIELDS = ("step", "total", "epoch")
_HEAD_COMMA = re.compile(rb"\nstep [0-9/ (.%)]*,")  # a comma in the head of a step line (not the first)
_layouts: dict[bytes, tuple[int, list[tuple[str, int, float | None]]] | None] = {}
_np = None


def _numpy():
    global _np
    if _np is None:
        try:
            import numpy

            _np = numpy
        except ImportError:  # pragma: no cover - numpy comes with matplotlib
            _np = False
    return _np or None


_TOKEN_MAX = 15  # chars of a number read by numpy: below 10**15 < 2**53, its digits make an exact float
_code = None  # byte -> its digit 0-9; "." -> 10; " " -> 11; anything else -> 255
_p10 = None  # 10.0**i, exact for i <= 22


def _token_columns(text: bytes, n: int, k: int, wanted: list[int]) -> dict[int, object] | None:
    """Columns `wanted` of n lines of k numbers each (`text` as `_NUM_TABLE` leaves it: digits,
    dots and signs between spaces), as float() reads every number; None when a column holds
    anything but plain decimals of at most 15 chars (np.fromstring then reads them all).

    The lines share one layout, so token j of every line is field j: numpy finds where the
    tokens start and end, then reads each column by its widths (a column has one or a few).
    """
    global _code, _p10
    np = _np
    if _code is None:
        code = np.full(256, 255, np.uint8)
        code[48:58] = np.arange(10)
        code[46], code[32] = 10, 11
        _code, _p10 = code, 10.0 ** np.arange(_TOKEN_MAX + 1)
    v = np.frombuffer(text, np.uint8)
    inside = np.zeros(len(v) + 2, np.bool_)
    np.not_equal(v, 32, out=inside[1:-1])
    bounds = np.flatnonzero(inside[1:] != inside[:-1])  # token starts and ends, alternating
    if len(bounds) != 2 * n * k:
        return None
    bounds = bounds.reshape(n, k, 2)
    out = {}
    for j in wanted:
        starts = bounds[:, j, 0]
        lengths = bounds[:, j, 1] - starts
        lo, hi = int(lengths.min()), int(lengths.max())
        if hi > _TOKEN_MAX or hi - lo > 4:
            return None
        if lo == hi:
            col = _decimals(v, starts, lo)
        else:
            col = np.empty(n)
            for w in range(lo, hi + 1):
                rows = np.flatnonzero(lengths == w)
                part = _decimals(v, starts[rows], w) if len(rows) else col[:0]
                if part is None:
                    return None
                col[rows] = part
        if col is None:
            return None
        out[j] = col
    return out


def _decimals(v, starts, w: int):
    """float() of the w-char tokens at `starts` of the text `v` (uint8), when each is digits with
    the dot (if any) at one place for all: their digits are read as an exact integer (below
    2**53) and divided once by 10**f, which rounds correctly, as float() does. Else None."""
    np = _np
    g = _code[v[starts[:, None] + np.arange(w)]]
    if g.max() > 10:
        return None  # a sign or another char: not a plain decimal
    place = np.arange(w - 1, -1, -1)
    dots = np.flatnonzero(g[0] == 10)
    f = 0
    if len(dots):
        at = int(dots[0])
        if len(dots) > 1 or w == 1 or not (g[:, at] == 10).all() or np.count_nonzero(g == 10) != len(g):
            return None
        f = w - 1 - at
        place = np.where(place > f, place - 1, place)
        place[at] = -1
    elif np.count_nonzero(g == 10):
        return None
    weights = np.where(place >= 0, _p10[np.maximum(place, 0)], 0.0)
    return (g @ weights) / _p10[f]


def _layout(key: bytes, first: bytes) -> tuple[int, list[tuple[str, int, float | None]]] | None:
    """(numbers per line, [(field, column, scale)]) for lines of this key, or None (per line)."""
    parts = key.split(b" | ")
    fparts = first.rstrip().split(b" | ")
    if parts[0] not in (b"step / (.%)", b"step / (%)") or len(fparts) != len(parts) or first != first.rstrip():
        return None
    fields = [("step", 0, None), ("total", 1, None), ("pct", 2, None)]
    col = 3
    for part, fpart in zip(parts[1:], fparts[1:], strict=True):
        n = len(fpart.translate(_NUM_TABLE, b",").split())
        name, sep, residue = part.partition(b": ")
        if residue.startswith(b"."):
            residue = residue[1:]  # the decimal point of the number
        if not sep:
            col += n  # per line such a part is ignored; its numbers are skipped here
            continue
        skip = int(name == b"bf_mfu")  # the 16 of bf16_mfu is a number of its own, before the value
        known = _STEP_FIELDS.get("bf16_mfu" if skip else name.decode("ascii", "replace"))
        if known is None or n != 1 + skip or residue not in _SCALES[known[1]]:
            return None
        fields.append((known[0], col + skip, _SCALES[known[1]][residue]))
        col += n
    first_head = fparts[0].split(b" ")
    if len(first_head) != 3 or len(fparts[0].translate(_NUM_TABLE, b",").split()) != 3:
        return None
    return col, fields


def _bulk_columns(lines: list[bytes], text: bytes | None = None, key: bytes | None = None) -> dict[str, list] | None:
    """Columns of step lines that share one key, or None when they must go line by line.
    `text` and `key`: the lines joined and their key, when the caller has them."""
    np = _np
    if key is None:
        key = lines[0].translate(None, _KEY_DELETE)
    if key not in _layouts:
        if len(_layouts) > 1024:  # junk can make many keys: the cache stays bounded
            _layouts.clear()
        _layouts[key] = _layout(key, lines[0])
    layout = _layouts[key]
    if layout is None:
        return None
    k, fields = layout
    if text is None:
        text = b"\n".join(lines)
    if not text.isascii():
        return None
    # parse_step reads the head's step and total with int(): a comma there is not a number
    if b"," in text and (b"," in lines[0].split(b" | ", 1)[0] or _HEAD_COMMA.search(text)):
        return None
    # every one of them must have been bf16_mfu (bf1_mfu has the same key); its 16 is a column skipped
    if b"bf_mfu" in key and text.count(b"| bf16_mfu: ") != len(lines) * key.count(b"| bf_mfu: "):
        return None
    text = text.translate(_NUM_TABLE, b",")
    n = len(lines)
    found = _token_columns(text, n, k, [j for _, j, _ in fields])
    if found is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                arr = np.fromstring(text, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
        if arr.size != k * n:
            return None
        arr = arr.reshape(n, k)
        found = {j: arr[:, j] for _, j, _ in fields}
        if any(name in _INT_FIELDS and not (np.abs(found[j]) < 2**53).all() for name, j, _ in fields):
            return None  # int() of a long number is exact, a float is not
    cols: dict[str, list] = {}
    for name, j, scale in fields:
        if name in _INT_FIELDS:
            cols[name] = found[j].astype(np.int64).tolist()
        elif scale is None:
            cols[name] = found[j].tolist()
        else:
            cols[name] = (found[j] * scale).tolist()
    return cols


def _steps_columns(step_lines: list[bytes]) -> dict[str, list] | None:
    """Columns of a chunk's step lines in file order, or None (the chunk goes line by line)."""
    joined = b"\n".join(step_lines)
    keys = joined.translate(None, _KEY_DELETE)
    n = len(step_lines)
    first = keys[: keys.find(b"\n")] if n > 1 else keys
    if len(keys) == n * (len(first) + 1) - 1 and keys == b"\n".join(repeat(first, n)):
        return _bulk_columns(step_lines, joined, first)  # one layout (the usual case)
    keys = keys.split(b"\n")
    groups: dict[bytes, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    out: dict[str, list] = {name: [None] * n for name in STEP_FIELDS}
    for idx in groups.values():
        lines = [step_lines[i] for i in idx]
        cols = _bulk_columns(lines)
        if cols is None:
            recs = [parse_step(b.decode("utf-8", "replace")) for b in lines]
            if any(r is None or r.extra for r in recs):
                return None
            cols = {name: [getattr(r, name) for r in recs] for name in STEP_FIELDS}
        for name, values in cols.items():
            col = out[name]
            for i, v in zip(idx, values, strict=True):
                col[i] = v
    return out


def _feed_others(state: LogState, blines: list[bytes]) -> None:
    """Feed the lines that are not step lines, in order, as `feed` would. A well-formed
    `moe step N | ...` line only sets `state.moe` (nothing else reads it), so of a run of them
    only the last is parsed. A moe line that might parse otherwise (rank prefix, odd head,
    trailing blank) sends the run line by line, where its order counts."""
    rest: list[bytes] = []
    moe = None
    n_moe = 0
    for b in blines:
        if b.startswith(b"moe step "):
            i = b.find(b" | ")
            # head digits only, and the line ends in a printable char: parse_moe reads it for sure
            if i > 9 and 32 < b[-1] < 127 and b[9:i].strip().isdigit():
                moe, n_moe = b, n_moe + 1
                continue
            moe = b""  # not sure: keep the order
        elif b[:1] == b"[" and b"moe step " in b:
            moe = b""
        rest.append(b)
    if moe == b"":
        state.feed_many([b.decode("utf-8", "replace") for b in blines])
        return
    state.feed_many([b.decode("utf-8", "replace") for b in rest])
    if moe is not None:
        state.lines_seen += n_moe
        state.moe = parse_moe(moe.decode("utf-8", "replace"))


def _bulk_feed(state: LogState, blines: list[bytes]) -> None:
    """Feed a chunk of complete byte lines to a full-parse state: step lines in bulk, the
    others (a few) line by line, with the same outcome as feeding every line in order."""
    if not blines:
        return
    flags = list(map(bytes.startswith, blines, repeat(b"step ")))
    if True not in flags:
        _feed_others(state, blines)
        return
    last = len(flags) - 1 - flags[::-1].index(True)
    before = list(compress(blines[:last], map(operator.not_, flags[:last])))
    step_lines = list(compress(blines, flags))
    cols = None
    if not any(b[:1] == b"[" and b"step " in b for b in before):  # a prefixed step line keeps its place
        cols = _steps_columns(step_lines)
    if cols is None:
        state.feed_many([b.decode("utf-8", "replace") for b in blines])
        return
    _feed_others(state, before)
    n = len(step_lines)
    state.lines_seen += n
    state.failure.went_on()  # step lines came after the evidence: training went on
    table = state.table
    assert table is not None
    start = len(table)
    table.extend(cols, n)
    if state.first_step is None:
        state.first_step = cols["step"][0]
    state.steps_observed += n
    state.window.extend(table.rows(max(start, len(table) - state.tail)))
    state.last = state.window[-1]
    _feed_others(state, blines[last + 1 :])


# ----------------------------------------------------------------------------------------------
# a leg's summary from the end of its log


@dataclass
class LegSummary:
    path: str
    run: str  # the log's file stem
    last_step: int | None = None
    total_steps: int | None = None
    pct: float | None = None
    last_loss: float | None = None
    steps_observed: int = 0
    tail_n: int = 0  # step lines in the tail window (<= tail)
    tok_per_sec: float | None = None  # tail means
    dt_ms: float | None = None
    mfu: float | None = None
    peak_mem_mib: float | None = None
    total_time_min: float | None = None
    eta_min: float | None = None
    finished: bool = False  # the final lines were seen
    failed: bool = False  # a traceback / torchrun failure after the last step line
    failure: list[str] = field(default_factory=list)
    error_line: str | None = None
    status: RunStatus = RunStatus.UNKNOWN  # completed, running, failed or unknown: from the log alone
    bal: float | None = None
    drop_pct: float | None = None
    moe_load: tuple[float, ...] = ()
    val: dict[str, float] = field(default_factory=dict)
    size: int = 0
    mtime: float | None = None
    exact_count: bool = True  # steps_observed counted line by line (else first..last step)
    error: str | None = None  # the log could not be read (missing, permissions)

    @property
    def has_metrics(self) -> bool:
        return self.tok_per_sec is not None or self.peak_mem_mib is not None


def summarize(path: str | os.PathLike[str], tail: int = 50, now: float | None = None) -> LegSummary:
    """A leg's summary: reads a small log whole, a large one backwards from its end.

    Never raises: an unreadable file gives a summary with `error` set and status "unknown".
    `status` from the log alone: completed (final lines), failed (traceback or torchrun
    failure after the last step), running (grew within RUNNING_STALE_S), else unknown.
    """
    p = Path(path)
    summary = LegSummary(path=str(p), run=p.stem)
    try:
        with fsutil.open_read(p) as f:
            st = os.fstat(f.fileno())
            summary.size, summary.mtime = st.st_size, st.st_mtime
            if st.st_size <= SMALL_LOG_BYTES:
                state = _state_of(f.read(), tail)
            else:
                state = _state_from_tail(f, st.st_size, tail)
                summary.exact_count = False
                first = _first_step(f)
                if state.last is not None and first is not None and first <= state.last.step:
                    state.first_step = first
                    state.steps_observed = max(state.steps_observed, state.last.step - first + 1)
    except OSError as e:
        summary.error = f"{p}: {e.strerror or e}"
        return summary
    except ValueError as e:  # a path the OS cannot take (a NUL byte)
        summary.error = f"{p}: {e}"
        return summary
    _fill(summary, state, now)
    return summary


def summary_of(state: LogState, path: str | os.PathLike[str], now: float | None = None) -> LegSummary:
    """A summary of lines already fed to a LogState (the TUI's followers use this)."""
    p = Path(path)
    summary = LegSummary(path=str(p), run=p.stem)
    try:
        st = os.stat(p)
        summary.size, summary.mtime = st.st_size, st.st_mtime
    except OSError:
        pass
    _fill(summary, state, now)
    return summary


def _state_of(data: bytes, tail: int, state: LogState | None = None) -> LogState:
    state = state or LogState(tail=tail)
    splitter = LineSplitter()
    state.feed_many(splitter.feed(data))
    # an unterminated last line is being written: a step line's numbers may be cut, so it
    # waits for its newline; any other text (a crash's last words) counts as it is
    state.feed_many([ln for ln in splitter.flush() if parse_step(ln) is None])
    return state


def _state_from_tail(f, size: int, tail: int) -> LogState:
    """The state of a big log from its end, read backwards in chunks (bounded memory).

    Lines are scanned from the end until the window holds `tail` step lines; the text from
    there to the end is parsed. When that text would be longer than TAIL_TEXT_BYTES (a flood
    of noise between or after the steps), only its last TAIL_TEXT_BYTES are parsed, and the
    scan goes on back for the window's step lines alone: final lines and a crash's traceback
    are at the end. Older lines (validation, moe) before the window are not read. What is
    kept meanwhile is positions and at most `tail` step lines, never the text's lines.
    """
    f.seek(size - 1)
    terminated = f.read(1) in (b"\n", b"\r")
    steps = 0
    begin = size  # the text to parse is [begin, size)
    newest = None  # where the last line starts
    for start, line in _lines_backwards(f, size):
        newest = start if newest is None else newest
        if size - start > TAIL_TEXT_BYTES:
            break  # this line crosses the text budget: the text starts after it
        begin = start
        # an unterminated last line is being written: a step line there is not counted (see _state_of)
        if _is_step(line) and (terminated or start != newest):
            steps += 1
        if steps >= tail:
            break
    else:  # read back to the first line, within the budget: the window is all there is
        return _state_of_range(f, begin, size, tail)
    if steps >= tail:
        return _state_of_range(f, begin, size, tail)
    window: list[bytes] = []
    # the step lines before the text: those before `begin`, or when not one line fitted the
    # budget, every complete one (an unterminated last line is not one)
    end = begin - 1 if begin < size else (size if terminated else max(0, (newest or 0) - 1))
    for _, line in _lines_backwards(f, end, need=b"step "):
        if _is_step(line):
            window.append(line)
            if steps + len(window) >= tail:
                break
    state = _state_of(b"\n".join(reversed(window)) + b"\n", tail) if window else LogState(tail=tail)
    return _state_of_range(f, begin, size, tail, state)


def _state_of_range(f, begin: int, end: int, tail: int, state: LogState | None = None) -> LogState:
    """_state_of for the bytes [begin, end) of a file, fed a chunk at a time: the lines of at
    most one chunk exist at once, whatever the range holds."""
    state = state or LogState(tail=tail)
    splitter = LineSplitter()
    f.seek(begin)
    left = end - begin
    while left > 0 and (data := f.read(min(64 << 10, left))):
        left -= len(data)
        state.feed_many(splitter.feed(data))
    state.feed_many([ln for ln in splitter.flush() if parse_step(ln) is None])
    return state


def _is_step(line: bytes) -> bool:
    if b"step " not in line:
        return False
    text = safetext.strip_escapes(line.decode("utf-8", "replace"))
    return parse_step(text) is not None


def _lines_backwards(f, end: int, need: bytes | None = None, max_line: int = MAX_LINE_BYTES, chunk: int = READ_CHUNK):
    """The non-empty lines of the file before byte `end`, newest first, as (start, bytes).

    Lines end at `\\n` or `\\r` and are cut to their first `max_line` bytes, as LineSplitter
    cuts them. Reads `chunk` bytes at a time from the end; a line longer than max_line (a
    gigabyte with no newline) costs a scan, never its size in memory: its head is read again
    once its start is found. `need`: only lines holding these bytes are wanted (the others
    may be skipped unread).
    """
    pos = end
    line_end = end  # where the line being assembled ends
    part = b""  # its bytes after `pos` (while it is no longer than max_line)
    long = False  # it is longer: its head is read again from its start

    def finish(start: int) -> bytes:
        if long:
            f.seek(start)
            return f.read(min(max_line, line_end - start))
        return part[:max_line]

    fd = f.fileno()
    size = os.fstat(fd).st_size
    while pos > 0:
        hole = fsutil.hole_start(fd, pos, size)
        if pos - hole > 2 * chunk:
            # a hole of a sparse file reads as zeros: no line ends in it, the line goes on through it
            part, long, pos = b"", True, hole
            continue
        lo = max(0, pos - chunk)
        f.seek(lo)
        data = f.read(pos - lo)
        if len(data) < pos - lo:  # the file shrank under us: read what is there
            data += bytes(pos - lo - len(data))
        if b"\r" in data:
            data = data.replace(b"\r", b"\n")
        i = len(data)
        j = data.rfind(b"\n")
        if j >= 0:
            # the line being assembled starts after this newline
            seg = data[j + 1 : i]
            if not long:
                part = seg + part
                if len(part) > max_line:
                    long = True
            line = finish(lo + j + 1)
            if line and (need is None or need in line):
                yield lo + j + 1, line
            part, long, i = b"", False, j
            if need is not None and need not in data[:j]:
                # no wanted line lies wholly in this chunk: skip to its first newline
                k = data.find(b"\n")
                line_end, i = lo + k, k
            else:
                line_end = lo + j
                while (j := data.rfind(b"\n", 0, i)) >= 0:
                    line = data[j + 1 : i][:max_line]
                    if line and (need is None or need in line):
                        yield lo + j + 1, line
                    line_end, i = lo + j, j
        # data[:i] is the end of a line that starts before this chunk
        if not long:
            part = data[:i] + part
            if len(part) > max_line:
                part, long = b"", True
        pos = lo
    line = finish(0)
    if line and (need is None or need in line):
        yield 0, line


def _first_step(f) -> int | None:
    """The first step number near the head of a big log (for the observed-steps count)."""
    f.seek(0)
    splitter = LineSplitter()
    read = 0
    while read < HEAD_SCAN_BYTES and (data := f.read(64 * 1024)):
        read += len(data)
        for line in splitter.feed(data):
            rec = parse_step(line) if line.startswith(("step ", "[")) else None
            if rec is not None:
                return rec.step
    return None


def _fill(s: LegSummary, state: LogState, now: float | None) -> None:
    s.tail_n = len(state.window)
    s.steps_observed = state.steps_observed
    s.tok_per_sec = state.tail_mean("tok_per_sec")
    s.dt_ms = state.tail_mean("dt_ms")
    s.mfu = state.tail_mean("mfu")
    s.peak_mem_mib = state.peak_mem_mib
    s.total_time_min = state.total_time_min
    s.finished = state.finished
    s.failed = state.failed
    s.failure = state.failure.reason
    s.error_line = state.failure.error_line
    if state.moe is not None:
        s.drop_pct, s.moe_load = state.moe.drop_pct, state.moe.load
    s.val = {k: v.value for k, v in state.val.items()}
    last = state.last
    if last is not None:
        s.last_step, s.total_steps, s.last_loss = last.step, last.total, last.loss
        s.bal = last.bal if last.bal is not None else (state.moe.bal if state.moe else None)
        if last.drop_pct is not None:
            s.drop_pct = last.drop_pct
        if last.total:
            s.pct = min(100.0, 100.0 * (last.step + 1) / last.total)
        elif last.pct is not None:
            s.pct = last.pct
        if not state.finished:
            if last.eta_min is not None:
                s.eta_min = last.eta_min
            elif last.total and s.dt_ms is not None:
                s.eta_min = max(0, last.total - last.step - 1) * s.dt_ms / 60000.0
    if s.failed:
        s.status = RunStatus.FAILED
    elif s.finished:
        s.status = RunStatus.COMPLETED
    elif last is not None and s.mtime is not None and (time.time() if now is None else now) - s.mtime < RUNNING_STALE_S:
        s.status = RunStatus.RUNNING
    else:
        s.status = RunStatus.UNKNOWN
