"""A full parse of a log: every step line kept as numpy columns, read in bulk.

`parse_file` reads a log from its start and gives the same LogState as feeding every line to
`LogState.feed`, with every step line's numbers in a StepTable (for the per-step CSV and the
plots). A log of millions of step lines is read at about the speed of scanning it with a regex:
a chunk's step lines are read as a block of text, never one by one.

How a block of step lines is read. Two translations of the text (C speed) say everything:

- its *key*, the text with digits deleted: lines of one layout share it
  (`step / (.%) | loss: . | lrm: . | dt: .ms | tok/sec: , | ...`);
- its *numbers*, the text with every character that is not part of a number blanked: numpy
  finds where each number starts and ends.

Lines that share a key, whose numbers fall in the same places (the same gaps between numbers),
differ in their digits only. So the first line says, for all of them, which number is which
field: its parts are read by name as `parse_step` reads them, and checked against what
`parse_step` makes of it. A field the parser does not know is skipped (it went to
`StepLine.extra`, which a table does not keep); a known field whose value is not a number
(`epoch: 0 pq: 1 rg: 2`) is skipped too, when its digits cannot make it one in any line. Each
field's numbers are then read a column at a time, 8 characters to a 64-bit word: the digits of a
number (an exact integer in a float) divided once by a power of ten, which rounds exactly as
float() does; the characters are kept too, for the CSV. Lines that none of this covers (a sign
in a number, a number of more than 15 characters, a rank prefix) are read line by line: the
outcome is the same, only slower.

Layer 0: imports nothing from the cockpit but fsutil, lazy, numtext and the log modules.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Callable
from itertools import compress, repeat
from typing import Any, NamedTuple

from cockpit import fsutil, lazy
from cockpit.logs.follow import LineSplitter, chunks
from cockpit.logs.lines import FIELD_PARSERS, parse_moe, parse_step, to_float, to_int, to_minutes, to_ms
from cockpit.logs.state import (
    INT_FIELDS,
    STEP_FIELDS,
    UNKNOWN_DECIMALS,
    Column,
    LogState,
    StepTable,
    absent,
    concat,
)
from cockpit.numtext import zero_bytes

BULK_CHUNK = 4 << 20  # bytes read at a time by a full parse: numpy's per-call cost is paid per chunk
TOKEN_MAX = 15  # characters of a number read by the column reader (its digits make an exact float)
_KEY_DELETE = b"0123456789"  # dots and commas stay: "42.5" and "42", "3,000" and "3000" get different keys
# The number text: a number's characters stay (all below 64: as int8, positive), a line's end
# becomes 128 (negative as int8), anything else 0; commas are deleted (thousands separators:
# `806,400`). The low four bits of every byte that is not a number's are 0.
_NUM_TABLE = bytes(c if c in b"0123456789.-+" else (128 if c == 10 else 0) for c in range(256))
_LINE_END = 128
_PAD = 16  # zeros before a block's numbers: a number's right-aligned window never starts before them
_SCALES = {  # converter -> unit after the number -> multiplier, exactly as the converters apply them
    to_float: {b"": None, b"%": None},
    to_ms: {b"": None, b"ms": None, b"s": 1000.0},
    to_minutes: {b"": 1.0, b"m": 1.0, b"s": 1 / 60.0, b"h": 60.0},
    to_int: {b"": None},
}
_HEAD = re.compile(rb"step [0-9]+/[0-9]+( \([0-9]*\.?[0-9]*%\))?")  # parse_step's head, when all numbers
np: Any = None  # numpy, loaded by the first full parse


def _numpy() -> Any:
    global np, _MINE, _P10F
    if np is None:
        np = lazy.numpy()
        _MINE = np.array([~((1 << (8 * (8 - k))) - 1) & (2**64 - 1) for k in range(9)], np.uint64)
        _P10F = 10.0 ** np.arange(16)
    return np


def parse_file(
    path: str | os.PathLike[str],
    tail: int = 50,
    keep_steps: int | None = None,
    on_steps: Callable[[StepTable], object] | None = None,
    chunk: int = BULK_CHUNK,
) -> LogState:
    """A full parse of a log: with keep_steps=None every step line is kept, as columns.

    `on_steps(table)`: called with the step lines of each chunk read (a StepTable), which is
    emptied afterwards, so the memory a parse holds is one chunk's, whatever the file's size.
    """
    if on_steps is not None:
        keep_steps = None
    state = LogState(tail=tail, keep_steps=keep_steps)
    splitter = LineSplitter()
    table = state.table
    if table is not None:
        _numpy()

    def hand_over() -> None:
        if on_steps is not None and table is not None and len(table):
            on_steps(table)
            table.clear()

    with fsutil.open_read(path) as f:
        for data in chunks(f, chunk):
            if table is not None:
                _feed_block(state, splitter.feed_block(data))
            else:
                state.feed_many(splitter.feed(data))
            hand_over()
    for line in splitter.flush():
        if parse_step(line) is None:  # a cut step line waits for its newline (see summary._state_of)
            state.feed(line)
    hand_over()
    return state


# ----------------------------------------------------------------------------------------------
# a chunk: step lines in bulk, the few others line by line


def _feed_block(state: LogState, block: bytes) -> None:
    """Feed a block of complete lines (LineSplitter.feed_block) to a full-parse state. The usual
    block, step lines of one layout and nothing else, is read as it is (an empty line in it is
    another layout); any other, as a list of lines."""
    if not block:
        return
    keys = block.translate(None, _KEY_DELETE) if block.isascii() else None
    if keys is not None and block.startswith(b"step ") and (n := _one_key(keys)):
        cols = _group_columns(block, n)  # every line starts with "step ": all share one layout
        if cols is not None:
            _feed_steps(state, cols, n, block.rsplit(b"\n", state.tail)[-state.tail :])
            return
    lines = block.split(b"\n")  # empty lines dropped, as LineSplitter drops them; each line's key beside it
    key_lines = None if keys is None else list(compress(keys.split(b"\n"), lines))
    _feed_chunk(state, [x for x in lines if x], key_lines)


def _one_key(keys: bytes) -> int:
    """How many lines `keys` holds when every line's key is the first line's; else 0."""
    cut = keys.find(b"\n")
    first = keys[:cut] if cut >= 0 else keys
    n, odd = divmod(len(keys) + 1, len(first) + 1)
    return n if not odd and keys == b"\n".join(repeat(first, n)) else 0


def _feed_chunk(state: LogState, blines: list[bytes], key_lines: list[bytes] | None = None) -> None:
    """Feed a chunk of complete byte lines to a full-parse state: step lines in bulk, the others
    line by line, with the same outcome as feeding every line in order. `key_lines`: each line's
    key, when the caller has them (ASCII lines).

    The other lines are fed around the step lines, not between them: a step line only clears
    failure evidence seen before it, and every other kind of line keeps its own order."""
    if not blines:
        return
    flags: list[bool] | None = list(map(bytes.startswith, blines, repeat(b"step ")))
    if True not in flags:
        _feed_others(state, blines)
        return
    if False not in flags:
        flags, step_lines, step_keys = None, blines, key_lines
    else:
        step_lines = list(compress(blines, flags))
        step_keys = None if key_lines is None else list(compress(key_lines, flags))
    text = b"\n".join(step_lines)
    found = _step_columns(step_lines, text, None if step_keys is None else b"\n".join(step_keys))
    if found is None:  # not lines the bulk reader can read: line by line
        state.feed_many([b.decode("utf-8", "replace") for b in blines])
        return
    cols, not_steps = found
    if not_steps:  # lines that start with "step " and are not step lines ("step function ..."): other lines
        flags = flags or [True] * len(blines)
        at = [i for i, f in enumerate(flags) if f]
        for j in not_steps:
            flags[at[j]] = False
        step_lines = list(compress(blines, flags))
    if flags is None:
        before: list[bytes] = []
        after: list[bytes] = []
    else:
        if True not in flags:
            state.feed_many([b.decode("utf-8", "replace") for b in blines])
            return
        last = len(flags) - 1 - flags[::-1].index(True)
        before = list(compress(blines[:last], map(operator.not_, flags[:last])))
        after = blines[last + 1 :]
        if any(b[:1] == b"[" and b"step " in b for b in before):  # a prefixed step line keeps its place
            state.feed_many([b.decode("utf-8", "replace") for b in blines])
            return
    _feed_others(state, before)
    _feed_steps(state, cols, len(step_lines), step_lines[-state.tail :])
    _feed_others(state, after)


def _feed_steps(state: LogState, cols: dict[str, Column], n: int, last_lines: list[bytes]) -> None:
    """n step lines read in bulk (`last_lines`: the last of them, for the tail window)."""
    table = state.table
    assert table is not None
    table.extend(n, cols)
    state.lines_seen += n
    state.failure.went_on()  # step lines came after the evidence: training went on
    if state.first_step is None:
        state.first_step = int(cols["step"].values[0])
    state.steps_observed += n
    # the tail window's records, exactly as the line parser makes them (with their extra fields);
    # step 0 is never in it (LogState._step)
    recs = [parse_step(b.decode("ascii")) for b in last_lines]
    state.window.extend(r for r in recs if r.step != 0)
    state.last = recs[-1]


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


# ----------------------------------------------------------------------------------------------
# step lines -> columns


def _step_columns(lines: list[bytes], text: bytes, keys: bytes | None = None) -> tuple[dict[str, Column], list[int]] | None:
    """Every field of these lines that start with "step " (`text`: them joined by newlines; `keys`:
    its key, when known) as columns, in order, and the positions of those that are not step lines
    after all; None when they must be fed line by line."""
    n = len(lines)
    if keys is None:
        if not text.isascii():
            return None  # invalid UTF-8 or another script: the line parser decides what it reads
        keys = text.translate(None, _KEY_DELETE)
    if _one_key(keys) == n:
        cols = _group_columns(text, n)  # one layout
        return (cols, []) if cols is not None else _line_columns(lines, list(range(n)))
    groups: dict[bytes, list[int]] = {}
    for i, key in enumerate(keys.split(b"\n")):
        groups.setdefault(key, []).append(i)
    parts: list[tuple[list[int], dict[str, Column]]] = []
    not_steps: list[int] = []
    for idx in groups.values():
        group = [lines[i] for i in idx]
        cols = _group_columns(b"\n".join(group), len(group))
        if cols is None:
            cols, rejected = _line_columns(group, idx)
            not_steps += rejected
            gone = set(rejected)
            idx = [i for i in idx if i not in gone]
        parts.append((idx, cols))
    rows = np.concatenate([np.asarray(idx, np.int64) for idx, _ in parts])
    order = np.argsort(rows, kind="stable")  # the groups' rows back in the chunk's order
    out = {}
    for name in STEP_FIELDS:
        c = concat([cols.get(name) or absent(name, len(idx)) for idx, cols in parts])
        out[name] = Column(*(None if a is None else a[order] for a in c))
    return out, sorted(not_steps)


def _line_columns(lines: list[bytes], idx: list[int]) -> tuple[dict[str, Column], list[int]]:
    """Columns of lines read one by one by the line parser (a layout the bulk reader does not
    take), and the positions (from `idx`) of those that are not step lines."""
    table = StepTable()
    rejected = []
    for i, b in zip(idx, lines, strict=True):
        rec = parse_step(b.decode("ascii"))
        if rec is None:
            rejected.append(i)
        else:
            table.append(rec)
    return {name: table.column(name) for name in STEP_FIELDS}, rejected


def _group_columns(text: bytes, n: int) -> dict[str, Column] | None:
    """Columns of n lines (`text`: joined by newlines) that share one key; None when they must be
    read line by line."""
    line0 = text[: text.find(b"\n")] if n > 1 else text
    u = np.frombuffer(bytes(_PAD) + text.translate(_NUM_TABLE, b","), np.uint8)
    inside = np.zeros(len(u) + 2, bool)
    np.greater(u.view(np.int8), 0, out=inside[1:-1])  # a number's characters
    edges = np.flatnonzero(inside[1:] != inside[:-1]).astype(np.int32)  # where a number starts, and ends
    line_ends = np.flatnonzero(u == _LINE_END)
    k = int(np.searchsorted(edges, line_ends[0], side="right")) // 2 if n > 1 else len(edges) // 2
    if k == 0 or len(edges) != 2 * n * k:
        return None
    bounds = edges.reshape(n, k, 2)
    starts, ends = bounds[:, :, 0], bounds[:, :, 1]
    line_start = np.concatenate(([_PAD], line_ends + 1))
    line_end = np.concatenate((line_ends, [len(u)]))
    gaps = np.empty((n, k + 1), np.int64)  # the text between numbers, the line's ends included
    gaps[:, 0] = starts[:, 0] - line_start
    gaps[:, 1:k] = starts[:, 1:] - ends[:, :-1]
    gaps[:, k] = line_end - ends[:, -1]
    if not (gaps == gaps[0]).all():
        return None  # the numbers fall elsewhere in some line: not one layout
    layout = _layout(line0, gaps[0].tobytes(), k)
    if layout is None:
        return None
    starts, ends = np.ascontiguousarray(bounds.transpose(2, 1, 0))  # row j: number j of every line
    lengths = ends - starts
    words = _words(u)
    for j in layout.name_numbers:  # the digits of a field's name (bf16_mfu) are the same in every line
        x = _number_words(words, ends[j], lengths[j])
        if not (x == x[0]).all():
            return None
    out: dict[str, Column] = {}
    for attr, j, scale in layout.fields:
        col = _read_numbers(u, words, ends[j], lengths[j], attr in INT_FIELDS, checked=True)
        if col is None:
            return None
        if scale is not None and scale != 1.0:  # a unit converted: the printed digits are not the value's
            col = Column(col.values * scale, col.present, np.full(n, UNKNOWN_DECIMALS, np.int8), None)
        out[attr] = col
    return out if _agrees(out, parse_step(line0.decode("ascii"))) else None


# ----------------------------------------------------------------------------------------------
# a layout: which number is which field


class Layout(NamedTuple):
    fields: list[tuple[str, int, float | None]]  # (StepLine attribute, number index, scale or None)
    name_numbers: list[int]  # the numbers that are digits of a field's name (the 16 of bf16_mfu)


_layouts: dict[bytes, Layout | None] = {}  # by the first line's key and gaps: a log has a few


def _layout(line: bytes, gaps: bytes, k: int) -> Layout | None:
    """Which of a line's k numbers is which field, as parse_step reads the line; None when a
    field's value is not a plain number with a known unit (and cannot be skipped for sure).
    `gaps`: the lengths of the text between its numbers (with its key, they fix the layout)."""
    cache_key = line.translate(None, _KEY_DELETE) + b"\0" + gaps
    if cache_key in _layouts:
        return _layouts[cache_key]
    if len(_layouts) > 1024:  # junk can make many keys: the cache stays bounded
        _layouts.clear()
    found = _make_layout(line, k)
    _layouts[cache_key] = found
    return found


_WORDS_TABLE = bytes(c if c in b"0123456789.-+" else 32 for c in range(256))  # numbers, blanks between


def _numbers(text: bytes) -> list[bytes]:
    """The numbers of a text as the number text holds them (commas left out)."""
    return text.translate(_WORDS_TABLE, b",").split()


def _count_numbers(text: bytes) -> int:
    return len(_numbers(text))


def _make_layout(line: bytes, k: int) -> Layout | None:
    if parse_step(line.decode("ascii")) is None or line != line.rstrip():
        return None
    parts = line.split(b" | ")
    head = parts[0]
    if not _HEAD.fullmatch(head):
        return None
    fields: list[tuple[str, int, float | None]] = [("step", 0, None), ("total", 1, None)]
    col = _count_numbers(head)
    if col == 3:
        fields.append(("pct", 2, None))
    fmap = {attr: (j, scale) for attr, j, scale in fields}
    name_numbers: list[int] = []
    for part in parts[1:]:
        n = _count_numbers(part)
        name, sep, value = part.partition(b": ")
        skip = _count_numbers(name) if sep else n  # digits in a name (bf16_mfu) are numbers too
        known = FIELD_PARSERS.get(name.decode("ascii")) if sep else None
        if sep:
            name_numbers += range(col, col + skip)  # bf1_mfu is not bf16_mfu: the digits must stay
        if known is None:
            col += n  # an unknown field (or a part without `: `): kept aside or ignored per line
            continue
        attr, conv = known
        residue = value.translate(None, b"0123456789,")  # the unit, after a point
        if residue.startswith(b"."):
            residue = residue[1:]  # the decimal point of the number
        if n - skip == 1 and (value[:1].isdigit() or value[:1] == b".") and residue in _SCALES[conv]:
            fmap[attr] = (col + skip, _SCALES[conv][residue])  # one number, then its unit
            col += n
            continue
        # not a plain number with a known unit: the line parser keeps it aside (the attribute
        # stays None) when it reads no number here in the first line and cannot in any other:
        # the part's numbers are digits only, so every line's value has the same shape
        if conv(value.decode("ascii")) is None and all(x.isdigit() for x in _numbers(value)):
            col += n
            continue
        return None
    if col != k:
        return None
    return Layout([(attr, j, scale) for attr, (j, scale) in fmap.items()], name_numbers)


def _agrees(cols: dict[str, Column], rec: Any) -> bool:
    """Does the first row of the columns say what parse_step says of the first line?"""
    for name in STEP_FIELDS:
        want = getattr(rec, name)
        col = cols.get(name)
        got = None if col is None or not col.present[0] else col.values[0].item()
        if type(want) is not type(got) or (want != got and not (want != want and got != got)):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# a column of numbers


def _words(u: Any) -> Any:
    """Word i: the 8 bytes of the number text from u[i], as a little-endian uint64 (a view, no copy)."""
    return np.ndarray((len(u) - 7,), "<u8", u, 0, (1,))


def _read_numbers(u: Any, words: Any, ends: Any, lengths: Any, integer: bool, checked: bool = False) -> Column | None:
    """The numbers of the number text `u` that end at `ends`, as float() (or int()) reads them;
    None when one is not a plain decimal the reader takes (the line parser reads those lines)."""
    if int(lengths.max()) <= 8:
        return _read_words(words, ends, lengths, integer, checked)
    return _read_column(u, ends, lengths, integer)


def _read_column(u: Any, ends: Any, lengths: Any, integer: bool) -> Column | None:
    """_read_numbers for numbers of up to TOKEN_MAX characters (their text is not kept).

    Each number is read right-aligned in a window of the widest one (the bytes before it count as
    leading zeros); a digit's low four bits are its value. The point counts as a digit 0 and is
    then taken out, and the integer of the digits is divided once by 10**(digits after the point):
    correctly rounded, as float() rounds."""
    n = len(ends)
    w = int(lengths.max())
    if w > TOKEN_MAX or int(lengths.min()) < 1:
        return None
    win = np.lib.stride_tricks.sliding_window_view(u, w)[ends - w]
    inside = np.arange(w) >= (w - lengths)[:, None]  # the number's own bytes (the rest: the text before it)
    is_digit = (win >= 48) & (win <= 57) & inside
    is_point = (win == 46) & inside
    if not (is_digit | is_point | ~inside).all():
        return None  # a sign
    points = is_point.sum(axis=1)
    if points.max() > 1 or (points >= lengths).any():
        return None  # two points, or a point and no digit
    digits = np.where(is_digit, win & np.uint8(15), np.uint8(0)).astype(np.float64) @ (10.0 ** np.arange(w - 1, -1, -1))
    whole = digits.astype(np.int64)  # the point counted as a digit 0: exact below 10**15
    if integer:
        if points.any():
            return None  # int() reads no point
        return Column(whole, np.ones(n, bool), np.zeros(n, np.int8))
    after = np.where(points > 0, w - 1 - np.argmax(is_point, axis=1), 0)  # digits after the point
    p10 = 10 ** after
    m = np.where(points > 0, (whole // (p10 * 10)) * p10 + whole % (p10 * 10), whole)
    return Column(m / p10.astype(np.float64), np.ones(n, bool), after.astype(np.int8))


_U64 = lambda x: np.uint64(x)  # noqa: E731 - numpy's uint64 arithmetic wants uint64 operands
_BYTES = 0x0101010101010101  # a 1 in every byte
_MINE: Any = None  # _MINE[length]: the bytes of a right-aligned number of that length
_P10F: Any = None  # 10.0**i


def _number_words(words: Any, ends: Any, lengths: Any) -> Any:
    """Each number of up to 8 characters that ends at `ends` as one uint64, its first character in
    the low byte of its place: right-aligned, the bytes before it 0."""
    return words[ends - 8] & _MINE[lengths]


def _read_words(words: Any, ends: Any, lengths: Any, integer: bool, checked: bool = False) -> Column | None:
    """The numbers of at most 8 characters that end at `ends`, as float() (or int()) reads them,
    8 characters at a time (each number one 64-bit word).

    The low four bits of each byte are its digit, and three multiply-and-mask steps add the digits
    of a word into its integer, once the point (if any) is taken out by moving the bytes before it
    up one place; the integer divided once by 10**(digits after the point) is float()'s number,
    rounded as float() rounds. Only digits and one point are taken: `checked` (lines of one
    layout, with the same non-digit characters in each number: see the module's docstring), the
    first number is checked for the others."""
    n = len(ends)
    x = _number_words(words, ends, lengths)
    probe = x[:1] if checked else x
    point = zero_bytes(probe ^ _U64(0x2E * _BYTES))  # 0x80 in each byte that is a point
    digit = zero_bytes((probe & _U64(0xF0 * _BYTES)) ^ _U64(0x30 * _BYTES)) & ~(
        (probe & _U64(0x0F * _BYTES)) + _U64(0x06 * _BYTES)) << _U64(3)  # 0x3_ with a low nibble below 10
    if ((~(point | digit)) & _MINE[lengths[: len(probe)]] & _U64(0x80 * _BYTES)).any() or (
            ((point - _U64(1)) & point) != 0).any():
        return None  # a sign, another character the reader does not take, or two points
    if checked and point[0] == 0:
        point = np.zeros(n, np.uint64)  # no number has a point
    else:
        point = zero_bytes(x ^ _U64(0x2E * _BYTES)) if checked else point
    has_point = point != 0
    if has_point.any():
        if integer or (has_point & (lengths < 2)).any():
            return None  # int() reads no point; a point alone is no number
        before = (point >> _U64(7)) - _U64(1)  # the bytes before the point
        x_digits = np.where(has_point, ((x & before) << _U64(8)) | (x & ~before & ~((point >> _U64(7)) * _U64(0xFF))), x)
        # the point's byte is 8q+7 bits up: q from the exponent of its float, 7 - q digits after it
        after = np.where(has_point, 7 - ((point.astype(np.float64).view(np.int64) >> 52) - 1030) // 8, 0)
    else:
        x_digits, after = x, None
    d = x_digits & _U64(0x0F * _BYTES)
    d = (d * _U64(10) + (d >> _U64(8))) & _U64(0x00FF00FF00FF00FF)  # pairs of digits
    d = (d * _U64(100) + (d >> _U64(16))) & _U64(0x0000FFFF0000FFFF)  # groups of four
    whole = ((d * _U64(10000) + (d >> _U64(32))) & _U64(0xFFFFFFFF)).astype(np.int64)  # all eight
    if integer:
        return Column(whole, np.ones(n, bool), np.zeros(n, np.int8), x)
    if after is None:
        return Column(whole.astype(np.float64), np.ones(n, bool), np.zeros(n, np.int8), x)
    return Column(whole / _P10F[after], np.ones(n, bool), after.astype(np.int8), x)
