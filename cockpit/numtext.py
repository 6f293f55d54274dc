"""Numbers computed from a log's (tail means) as text without float noise, for the summary CSV.

Layer 0: imports nothing from the cockpit.
"""

from __future__ import annotations


def computed(x: float | int) -> str:
    """A number computed from the log's (a tail mean) as text without float noise: rounded to
    12 significant digits, far more than a log prints and far fewer than the 17 that carry a
    binary sum's error, then its shortest form (`0.15`, not `0.15000000000000002`)."""
    if isinstance(x, int) or x != x or x in (float("inf"), float("-inf")):
        return str(x)
    return repr(float(f"{x:.12g}"))
