"""A full parse of a log: every step line kept, its numbers read in bulk by numpy.

`parse_file` reads a log from its start and keeps every step line as columns (for the per-step
CSV and the plots), with the same records as `parse_step` line by line, several times faster.

Lines of one layout share their text once digits and commas are deleted (the "key":
`step / (.%) | loss: . | lrm: . | dt: .ms | ...`). For each key, the lines' numbers are read at
once by numpy from the joined text with every other character blanked, and the key says which
column is which field. A key the per-line parser would read differently (unknown fields, odd
units, a number count that does not add up) sends its lines to parse_step.
"""

from __future__ import annotations

import operator
import os
import re
import warnings
from itertools import compress, repeat

from cockpit import fsutil
from cockpit.logs.follow import LineSplitter, chunks
from cockpit.logs.lines import FIELD_PARSERS, parse_moe, parse_step, to_float, to_int, to_minutes, to_ms
from cockpit.logs.state import STEP_FIELDS, LogState


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
        for data in chunks(f):
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


_KEY_DELETE = b"0123456789,"  # dots stay: "42.5" and "42" get different keys
_NUM_TABLE = bytes(c if c in b"0123456789.-+" else 32 for c in range(256))
_SCALES = {  # converter -> unit residue -> multiplier, exactly as the converters apply them
    to_float: {b"": None, b"%": None},
    to_ms: {b"": None, b"ms": None, b"s": 1000.0},
    to_minutes: {b"": 1.0, b"m": 1.0, b"s": 1 / 60.0, b"h": 60.0},
    to_int: {b"": None},
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
        known = FIELD_PARSERS.get("bf16_mfu" if skip else name.decode("ascii", "replace"))
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
