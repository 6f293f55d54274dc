"""Text shapes the widgets share: bars, sparklines, numbers (a delta is `stats.fmt_pct`, as the report writes it).

Pure functions of their arguments (no state, no I/O), so every widget formats a figure the same
way and the tests can pin them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SPARK = "▁▂▃▄▅▆▇█"
DASH = "-"


def spark(
    values: Iterable[float | None], width: int = 16, lo: float | None = None, hi: float | None = None
) -> str:
    """The last `width` values as a block sparkline scaled to their own min..max, or to a fixed
    `lo`..`hi` (utilization 0..100 %, memory 0..total: a flat line then reads as its level)."""
    vals = [v for v in values if v is not None][-width:]
    if not vals:
        return ""
    if lo is not None and hi is not None and hi > lo:
        return "".join(
            SPARK[max(0, min(len(SPARK) - 1, int((v - lo) / (hi - lo) * (len(SPARK) - 1) + 0.5)))]
            for v in vals
        )
    lo, hi = min(vals), max(vals)
    span = hi - lo
    if span <= 0:
        return SPARK[len(SPARK) // 2] * len(vals) if hi > 0 else SPARK[0] * len(vals)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in vals)


def bar(pct: float | None, width: int = 10) -> str:
    """A horizontal bar for 0..100 %, in eighths of a cell."""
    if pct is None:
        return "·" * width
    pct = max(0.0, min(100.0, pct))
    eighths = round(pct / 100 * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return text.ljust(width, " ")


def num(value: float | None, digits: int = 2, comma: bool = False) -> str:
    if value is None:
        return DASH
    return f"{value:,.{digits}f}" if comma else f"{value:.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:.{digits}f}%"


def mib(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value / 1024:.1f}G" if value >= 1024 else f"{value:.0f}M"


def minutes(value: float | None) -> str:
    if value is None:
        return DASH
    if value >= 60:
        return f"{int(value // 60)}h{int(value % 60):02d}m"
    return f"{value:.1f}m"


STAMPED = re.compile(r"^(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})(?:_|$)")  # <YYYYmmdd_HHMMSS>_<experiment>


def dir_tag(name: str, names: Iterable[str] = ()) -> str:
    """A dir in a few characters, told apart from `names`: `17:54:12` for a stamped dir (its
    date too, `02-24 17:54:12`, when they are not all of one day), else its name's first 15."""
    m = STAMPED.match(name)
    if m is None:
        return name[:15]
    days = {n[:8] for n in names if STAMPED.match(n)}
    when = f"{m[4]}:{m[5]}:{m[6]}"
    return when if len(days | {name[:8]}) == 1 else f"{m[2]}-{m[3]} {when}"
