"""Numbers as text a column at a time: exactly what str() prints, written by numpy for a million rows.

The per-step CSV of a report holds every step line's numbers: millions of them for a long run.
Formatting them one by one costs about a microsecond each; here a whole column becomes a matrix
of characters at once (one row per number, 0 where a row has no more characters), and `csv_text`
joins the columns of every row into CSV text in one pass.

The text is str()'s: an int as `42`, a float as the shortest digits that read back as the same
float (`650.67`, `806400.0`). A float that was read from a log's `181.2495` is printed `181.2495`,
never with float noise (`181.24949999999998`): given the number of digits the log printed after
the point (`decimals`), its digits are recovered exactly (`rint(value * 10**decimals)`, exact
below 2**51), checked, and trailing zeros dropped, as str() does. Anything else (a value whose
printed precision is unknown, nan, inf, a magnitude str() writes with an exponent) is formatted
by str() itself, one by one: those are rare.

Layer 0: imports nothing from the cockpit but lazy (numpy, loaded by the first column).
"""

from __future__ import annotations

from typing import Any

from cockpit import lazy

MAX_DIGITS = 15  # at most this many significant digits: below 10**15 < 2**53 every integer is exact
np: Any = None  # numpy, once the first column is formatted
_P10: Any = None  # 10**i as int64
_P10F: Any = None  # and as float64 (exact)


def _load() -> None:
    global np, _P10, _P10F
    if np is None:
        np = lazy.numpy()
        _P10 = 10 ** np.arange(MAX_DIGITS + 2, dtype=np.int64)
        _P10F = _P10.astype(np.float64)


def computed(x: float | int) -> str:
    """A number computed from the log's (a tail mean) as text without float noise: rounded to
    12 significant digits, far more than a log prints and far fewer than the 17 that carry a
    binary sum's error, then its shortest form (`0.15`, not `0.15000000000000002`)."""
    if isinstance(x, int) or x != x or x in (float("inf"), float("-inf")):
        return str(x)
    return repr(float(f"{x:.12g}"))


def int_cells(values: Any, present: Any) -> Any:
    """(n, w) uint8: str(v) of each int where present (an empty cell where not)."""
    _load()
    n = len(values)
    if values.dtype == object:  # an int too big for int64: as Python prints it
        return _python_cells([str(v) if p else "" for v, p in zip(values.tolist(), present.tolist(), strict=True)])
    if n == 0:
        return np.zeros((0, 0), np.uint8)
    neg = values < 0
    mag = np.abs(values)
    if (mag < 0).any():  # -2**63 has no positive int64
        return _python_cells([str(v) if p else "" for v, p in zip(values.tolist(), present.tolist(), strict=True)])
    return _render(mag, np.zeros(n, np.int64), neg, present, float_dot=False)


def float_cells(values: Any, present: Any, decimals: Any) -> Any:
    """(n, w) uint8: str(v) of each float where present. `decimals`: the digits after the point
    the number was printed with (negative: not known)."""
    _load()
    n = len(values)
    if n == 0:
        return np.zeros((0, 0), np.uint8)
    f = decimals.astype(np.int64)
    mag = np.abs(values)
    # str() writes an exponent below 1e-4 and from 1e16; a magnitude of more than 15 digits is not exact
    plain = present & (f >= 0) & (f <= MAX_DIGITS) & np.isfinite(values) & ((mag == 0) | (mag >= 1e-4)) & (mag < 1e15)
    fc = np.where(plain, f, 0)
    digits = np.rint(np.where(plain, mag, 0.0) * _P10F[fc])
    plain &= digits < 2.0**51
    m = np.where(plain, digits, 0.0).astype(np.int64)
    plain &= (m / _P10F[fc]) == np.where(plain, mag, 0.0)  # the digits read back as the same float
    m = np.where(plain, m, 0)
    fc = np.where(plain, fc, 0)
    while True:  # str() drops trailing zeros after the point
        z = (fc > 0) & (m % 10 == 0)
        if not z.any():
            break
        m = np.where(z, m // 10, m)
        fc = fc - z
    cells = _render(m, fc, np.signbit(values) & plain, plain, float_dot=True)
    other = np.flatnonzero(present & ~plain)
    if len(other):  # by str(), one by one
        texts = [str(float(values[i])).encode() for i in other.tolist()]
        width = max(cells.shape[1], max(map(len, texts)))
        if width > cells.shape[1]:
            cells = np.concatenate([cells, np.zeros((n, width - cells.shape[1]), np.uint8)], axis=1)
        for i, t in zip(other.tolist(), texts, strict=True):
            cells[i, : len(t)] = np.frombuffer(t, np.uint8)
            cells[i, len(t):] = 0
    return cells


def token_cells(words: Any, present: Any, values: Any, integer: bool) -> Any:
    """(n, w) uint8: str() of numbers given the characters a log printed them with (`words`:
    digits and at most one point, right-aligned in each uint64, its first character in the low
    byte, 0 before). The same characters, less the zeros str() leaves out (leading ones; trailing
    ones after the point but the first), plus the ones it adds (`0.5` for `.5`, `7.0` for a float
    printed `7`), a byte at a time across all rows at once."""
    _load()
    n = len(words)
    u = lambda v: np.uint64(v)  # noqa: E731
    high, ones = u(0x8080808080808080), 0x0101010101010101
    x = words if present.all() else np.where(present, words, u(0))
    used = ~zero_bytes(x) & high  # the number's bytes
    zero = zero_bytes(x ^ u(0x30 * ones))  # its "0"s
    point = u(0) if integer else zero_bytes(x ^ u(0x2E * ones))  # its point, if any
    pointed = not integer and bool(point.any())
    first = _smear_up(used & ~zero)  # from the first character that is not a 0 (a digit, or the point)
    lead = zero & ~first & ~(point >> u(8)) & ~u(0x80 << 56)  # leading zeros; the last, and a 0 before the point, stay
    if lead.any():
        x = x & ~((lead >> u(7)) * u(0xFF))
    suffix = None
    if pointed:
        x = x | (((point >> u(8)) & ~used & high) >> u(7)) * u(0x30)  # `.5`: a 0 before the point
        after = _smear_up(point << u(8))  # the bytes after the point
        last = _smear_down(used & ~zero & ~point & after)  # up to the last digit after it that is not 0
        trail = zero & after & ~last & ~(point << u(8))  # trailing zeros; the first after the point stays
        x = x & ~((trail >> u(7)) * u(0xFF))
        ends_in_point = (point >> u(63)) != 0  # `7.`: a 0 after the point
        if not (point != 0).all() or ends_in_point.any():
            suffix = np.zeros((n, 2), np.uint8)
            suffix[:, 0] = np.where(present & (point == 0), ord("."), np.where(ends_in_point, ord("0"), 0))
            suffix[:, 1] = np.where(present & (point == 0), ord("0"), 0)
    elif not integer:  # no point in any: every present float gets `.0`
        suffix = np.zeros((n, 2), np.uint8)
        suffix[present] = (ord("."), ord("0"))
    used_bytes = int(np.bitwise_or.reduce(x)) if n else 0  # the bytes some number uses (the first ones are 0 in all)
    skip = ((used_bytes & -used_bytes).bit_length() - 1) // 8 if used_bytes else 8  # leading bytes no number uses
    digits = x.view(np.uint8).reshape(n, 8)[:, skip:]
    cells = digits if suffix is None else np.concatenate([digits, suffix], axis=1)
    if pointed or not integer:  # what str() writes otherwise: an exponent below 1e-4, no room for a 0 before a point
        odd = present & (((values != 0) & (np.abs(values) < 1e-4)) | ((point & u(0x80)) != 0))
        for i in np.flatnonzero(odd).tolist():
            text = str(float(values[i])).encode()
            if len(text) > cells.shape[1]:
                cells = np.concatenate([cells, np.zeros((n, len(text) - cells.shape[1]), np.uint8)], axis=1)
            cells[i] = 0
            cells[i, : len(text)] = np.frombuffer(text, np.uint8)
    return cells


def zero_bytes(x: Any) -> Any:
    """0x80 in each byte of the uint64s x that is 0, else 0 (exact: no carry from one byte to the next)."""
    _load()
    low7 = np.uint64(0x7F7F7F7F7F7F7F7F)
    return ~(((x & low7) + low7) | x) & np.uint64(0x8080808080808080)


def _smear_up(s: Any) -> Any:
    """Every byte from the lowest marked one up marked (bytes are characters in order)."""
    for k in (8, 16, 32):
        s = s | (s << np.uint64(k))
    return s


def _smear_down(s: Any) -> Any:
    """Every byte from the highest marked one down marked."""
    for k in (8, 16, 32):
        s = s | (s >> np.uint64(k))
    return s


def _render(m: Any, f: Any, neg: Any, show: Any, float_dot: bool) -> Any:
    """Characters of m / 10**f (m >= 0): `-` where neg, the integer digits, and for a float the
    point and f digits (`.0` when f is 0). Rows not in `show` stay empty."""
    n = len(m)
    a = m // _P10[f]  # the integer part
    b = m - a * _P10[f]  # the digits after the point, f of them
    na = np.searchsorted(_P10[1:], a, side="right") + 1  # digits of the integer part, at least 1
    wa = int(na[show].max()) if show.any() else 1
    wf = max(1, int(f[show].max())) if (float_dot and show.any()) else (1 if float_dot else 0)
    width = 1 + wa + (1 + wf if float_dot else 0)
    out = np.zeros((n, width), np.uint8)
    out[:, 0] = np.where(neg & show, ord("-"), 0)
    for j in range(wa):  # the j-th digit from the right of the integer part
        d = (a // _P10[j]) % 10 + 48
        out[:, wa - j] = np.where(show & (j < na), d, 0)
    if float_dot:
        out[:, wa + 1] = np.where(show, ord("."), 0)
        for i in range(wf):  # the i-th digit after the point
            d = (b // _P10[np.maximum(f - 1 - i, 0)]) % 10 + 48
            d = np.where(i < f, d, np.where((i == 0) & (f == 0), ord("0"), 0))
            out[:, wa + 2 + i] = np.where(show, d, 0)
    return out


def _python_cells(texts: list[str]) -> Any:
    raw = [t.encode() for t in texts]
    width = max(map(len, raw), default=0)
    out = np.zeros((len(raw), width), np.uint8)
    for i, t in enumerate(raw):
        out[i, : len(t)] = np.frombuffer(t, np.uint8)
    return out


def csv_text(prefix: bytes, cells: list[Any], sep: bytes = b",", end: bytes = b"\r\n") -> bytes:
    """Rows of `prefix` then the cells separated by `sep`, each row ended by `end`; a cell's 0
    bytes are dropped (prefix, sep and end must hold none)."""
    _load()
    if not cells or not len(cells[0]):
        return b""
    n = len(cells[0])
    col = lambda b: np.broadcast_to(np.frombuffer(b, np.uint8), (n, len(b)))  # noqa: E731
    parts = [col(prefix)] if prefix else []
    for i, c in enumerate(cells):
        if i:
            parts.append(col(sep))
        parts.append(c)
    parts.append(col(end))
    flat = np.concatenate(parts, axis=1).ravel()
    return flat[flat != 0].tobytes()
