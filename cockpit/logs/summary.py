"""A leg's summary from its log: read whole when small, from its end when big.

`summarize(path)` answers what the cockpit shows of a leg without reading all of a big log: the
tail means over the last `tail` step lines (and the window's values, for their spread), the last
step, quality and routing (validation bpb, loss, drop %, balance), the final lines, the failure
evidence, and a status from the log alone. `last_lines(path, n)` gives a log's last lines. It reads a big log backwards in chunks and keeps at most the tail
window's step lines and TAIL_TEXT_BYTES of text, whatever the file holds.

Layer 0: imports nothing from the cockpit but fsutil, safetext, vocab, figures and the log modules.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cockpit import fsutil, safetext
from cockpit.figures import Figures
from cockpit.logs.follow import MAX_LINE_BYTES, READ_CHUNK, LineSplitter
from cockpit.logs.lines import StepLine, parse_step
from cockpit.logs.state import LogState
from cockpit.vocab import DEFAULT_TAIL, STEP_METRICS, RunStatus

SMALL_LOG_BYTES = 256 << 10  # a log up to this size is parsed whole (exact step count; 280 steps are ~60 KB)
HEAD_SCAN_BYTES = 4 << 20  # how far into a big log its first step line is looked for
TAIL_TEXT_BYTES = 8 << 20  # a big log's summary parses at most this much text besides its step lines
RUNNING_STALE_S = 300.0  # a log without final lines that grew this recently counts as running


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
    bal: float | None = None  # the last step's (or moe line's)
    drop_pct: float | None = None
    moe_load: tuple[float, ...] = ()
    val: dict[str, float] = field(default_factory=dict)  # the last validation line of each kind
    # the tail window's values of the per-step metrics (STEP_METRICS), oldest first: their spread
    tail_values: dict[str, tuple[float, ...]] = field(default_factory=dict)
    tail_drop_pct: float | None = None  # tail means over the step lines that carry the field
    tail_bal: float | None = None
    min_val_bpb: float | None = None  # the trainer's minimum, else the least line seen in a log read whole
    last_val_bpb: float | None = None
    batch_tokens: int | None = None  # tokens per optimizer step (the setup line)
    size: int = 0
    mtime: float | None = None
    exact_count: bool = True  # steps_observed counted line by line (else first..last step)
    error: str | None = None  # the log could not be read (missing, permissions)

    @property
    def has_metrics(self) -> bool:
        return self.tok_per_sec is not None or self.peak_mem_mib is not None

    @property
    def figures(self) -> Figures:
        """Its figures as a report has them: speed and routing as tail means, the last loss."""
        return Figures(
            tok_per_sec=self.tok_per_sec,
            dt_ms=self.dt_ms,
            mfu=self.mfu,
            peak_mem_mib=self.peak_mem_mib,
            total_time_min=self.total_time_min,
            min_val_bpb=self.min_val_bpb,
            last_val_bpb=self.last_val_bpb,
            final_loss=self.last_loss,
            drop_pct=self.tail_drop_pct,
            bal=self.tail_bal,
        )


def summarize(path: str | os.PathLike[str], tail: int = DEFAULT_TAIL, now: float | None = None) -> LegSummary:
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
    _fill(summary, state, now, whole=summary.exact_count)
    return summary


def summary_of(state: LogState, path: str | os.PathLike[str], now: float | None = None) -> LegSummary:
    """A summary of lines already fed to a LogState (the TUI's followers use this: fed from the
    log's start, so every validation line is in it)."""
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

    Lines are scanned from the end until the window holds `tail` step lines (step 0 is never in a
    window: it does not count, see LogState); the text from
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
        if _in_window(line) and (terminated or start != newest):
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
    held = 0  # the window's lines among them: a step 0 is never one, but the newest step line is kept
    for _, line in _lines_backwards(f, end, need=b"step "):
        step = _step_of(line)
        if step is None or (step == 0 and window):
            continue
        window.append(line)
        held += step != 0
        if steps + held >= tail:
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


def _step_of(line: bytes) -> int | None:
    """The step of a step line, read exactly as LineSplitter reads it (the same escapes
    removed); None for any other line."""
    if b"step " not in line:
        return None
    rec = parse_step(safetext.strip_escapes_bytes(line).decode("utf-8", "replace"))
    return rec.step if rec is not None else None


def _in_window(line: bytes) -> bool:
    """Is this a step line a tail window holds (any step but step 0)?"""
    return _step_of(line) not in (None, 0)


def _lines_backwards(
    f, end: int, need: bytes | None = None, max_line: int = MAX_LINE_BYTES, chunk: int = READ_CHUNK
):
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


def last_lines(path: str | os.PathLike[str], n: int, whole: bool = False) -> tuple[list[str], int]:
    """The last n lines of a log, oldest first, as LineSplitter gives them (escape sequences
    removed, `\\r` a line end, a long line cut), read from its end in bounded memory; and the
    byte offset they end at. `whole`: only lines that have their end, so a follower that starts
    at the offset gives the line still being written once it is whole."""
    with fsutil.open_read(path) as f:
        size = os.fstat(f.fileno()).st_size
        end = _after_last_line_end(f, size) if whole else size
        out: list[bytes] = []
        if n > 0:
            for _, line in _lines_backwards(f, end):
                if line := safetext.strip_escapes_bytes(line):
                    out.append(line)
                    if len(out) == n:
                        break
    return [b.decode("utf-8", "replace") for b in reversed(out)], end


def _after_last_line_end(f, size: int, chunk: int = READ_CHUNK) -> int:
    """The offset just after the file's last `\\n` or `\\r` (0 when it has none)."""
    pos = size
    while pos > 0:
        lo = max(0, pos - chunk)
        f.seek(lo)
        data = f.read(pos - lo)
        i = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if i >= 0:
            return lo + i + 1
        pos = lo
    return 0


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


PCT_BEFORE_END = 99.99  # the most a run that has not printed its final lines is done


def progress_pct(last: StepLine, finished: bool) -> float | None:
    """How far a run is, in percent: the log's own figure on its last step line (`step 00042/00280
    (15.00%)`), else step / total as the trainer computes it; 100 only once the final lines are
    there, never before (a last step line reads 99.64%, and so does the run)."""
    if finished:
        return 100.0
    pct = last.pct if last.pct is not None else (100.0 * last.step / last.total if last.total else None)
    return None if pct is None or not math.isfinite(pct) else max(0.0, min(PCT_BEFORE_END, pct))


def _fill(s: LegSummary, state: LogState, now: float | None, whole: bool = True) -> None:
    """`whole`: the state saw every line of the log (not only its end)."""
    s.tail_n = len(state.window)
    s.steps_observed = state.steps_observed
    s.tok_per_sec = state.tail_mean("tok_per_sec")
    s.dt_ms = state.tail_mean("dt_ms")
    s.mfu = state.tail_mean("mfu")
    s.tail_values = {m: state.tail_values(m) for m in STEP_METRICS}
    s.tail_drop_pct = state.tail_mean("drop_pct")
    s.tail_bal = state.tail_mean("bal")
    s.batch_tokens = state.batch_tokens
    if state.val_bpb:
        s.last_val_bpb = state.val_bpb[-1].value
    s.min_val_bpb = state.min_val_bpb
    if s.min_val_bpb is None and whole:  # no minimum line (yet): the least one seen
        s.min_val_bpb = min((v.value for v in state.val_bpb if math.isfinite(v.value)), default=None)
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
        s.pct = progress_pct(last, state.finished)
        if not state.finished:
            if last.eta_min is not None:
                s.eta_min = last.eta_min
            elif last.total and s.dt_ms is not None:
                s.eta_min = max(0, last.total - last.step - 1) * s.dt_ms / 60000.0
    if s.failed:
        s.status = RunStatus.FAILED
    elif s.finished:
        s.status = RunStatus.COMPLETED
    elif (
        last is not None
        and s.mtime is not None
        and (time.time() if now is None else now) - s.mtime < RUNNING_STALE_S
    ):
        s.status = RunStatus.RUNNING
    else:
        s.status = RunStatus.UNKNOWN
