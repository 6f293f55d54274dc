"""How sure is a number: the mean of a tail window with its 95% interval, and a delta's verdict.

Step times of a training run are not independent draws: a slow step (a GC pause, a neighbour on
the node, a data stall) is often followed by another, so the naive standard error of a tail
window's mean, s / sqrt(n), is too small and a 1% difference looks "significant" when it is
noise. Here the window's lag-1 autocorrelation r1 shrinks n to an effective sample size

    n_eff = n * (1 - r1) / (1 + r1)          (exact for an AR(1) series)

with r1 corrected for its small-sample bias (it reads low by about (1 + 3 r1) / n) and kept in
[0, 0.95]. The 95% interval of the mean is t(n_eff - 1) * s / sqrt(n_eff). Over many synthetic
AR(1) windows of 50 steps with lag-1 correlation up to 0.5, it holds the true mean about 95% of
the time (tests/test_stats.py).

A delta is a ratio of two means, run / baseline - 1. Its interval comes from the two means'
relative standard errors (the delta method), with Welch's degrees of freedom. The verdict is
`significant` when that interval excludes 0, else `within noise`. When the runs were repeated,
each repeat's mean is one independent sample (`across`), which also captures the run-to-run
noise a single window cannot see.

Layer 0: imports only vocab (the verdict words).

Pure Python on purpose: windows are tens to thousands of values, and the cockpit's core imports
nothing heavy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cockpit.vocab import Verdict

MAX_R1 = 0.95  # beyond this the window is one slow drift, and n_eff would fall below 3% of n

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond 30 the
# Cornish-Fisher expansion around the normal quantile is exact to 1e-4.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
_Z975 = 1.959964


def t975(dof: float) -> float:
    """The 97.5% quantile of Student's t with `dof` (>= 1, fractional allowed) degrees of freedom."""
    nu = max(1.0, float(dof))
    if nu <= len(_T975):
        lo = int(nu)
        hi = min(lo + 1, len(_T975))
        frac = nu - lo
        return _T975[lo - 1] + (_T975[hi - 1] - _T975[lo - 1]) * frac
    z = _Z975
    return z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)


@dataclass(frozen=True)
class Estimate:
    """The mean of a series with its spread and the half-width of its 95% interval."""

    mean: float
    std: float  # sample standard deviation of the values
    n: int  # how many values
    n_eff: float  # the number of independent values they are worth
    half_width: float  # 95% interval of the mean: mean +- half_width

    @property
    def rel_se(self) -> float:
        """Standard error of the mean relative to the mean (inf when the mean is 0)."""
        se = self.std / math.sqrt(self.n_eff)
        return se / abs(self.mean) if self.mean else math.inf


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def lag1(values: Sequence[float]) -> float:
    """The lag-1 autocorrelation of a series (0 for a constant one)."""
    n = len(values)
    m = sum(values) / n
    d = [v - m for v in values]
    den = sum(x * x for x in d)
    if den == 0:
        return 0.0
    return sum(d[i] * d[i + 1] for i in range(n - 1)) / den


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of 2 or more finite values. The squares are products:
    a garbage-sized value (2.7e154 ms in a log) overflows them to inf, where `**` would raise."""
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) * (x - mean) for x in xs) / (len(xs) - 1))


def estimate(values: Sequence[float]) -> Estimate | None:
    """Mean and 95% interval of consecutive per-step values; None for fewer than 2 finite ones."""
    xs = _finite(values)
    n = len(xs)
    if n < 2:
        return None
    mean, std = _mean_std(xs)
    r1 = lag1(xs)
    r1 = min(max(r1 + (1 + 3 * r1) / n, 0.0), MAX_R1)
    n_eff = max(2.0, n * (1 - r1) / (1 + r1))
    return Estimate(mean, std, n, n_eff, t975(n_eff - 1) * std / math.sqrt(n_eff))


def across(means: Sequence[float]) -> Estimate | None:
    """Mean and 95% interval of independent values (one per repeat); None for fewer than 2."""
    xs = _finite(means)
    n = len(xs)
    if n < 2:
        return None
    mean, std = _mean_std(xs)
    return Estimate(mean, std, n, float(n), t975(n - 1) * std / math.sqrt(n))


@dataclass(frozen=True)
class Delta:
    """run against baseline, in percent of the baseline, with its 95% interval and verdict."""

    pct: float | None  # 100 * (run / baseline - 1); None when it cannot be computed
    ci_pct: float | None  # half-width of the 95% interval of pct; None without spread
    verdict: Verdict
    why: str | None = None  # why pct or the verdict is missing


def pct_change(baseline: float | None, run: float | None) -> tuple[float | None, str | None]:
    """(run - baseline) / baseline in percent, or None with the reason it is not a finite number
    (a figure missing, nan or inf, a baseline of 0, a change too big for a float)."""
    for who, v in (("the baseline", baseline), ("the run", run)):
        if v is None:
            return None, f"{who} has no figure"
        if not math.isfinite(v):
            return None, f"{who}'s figure is {v}"
    if baseline == 0:
        return None, "the baseline's figure is 0"
    pct = (run - baseline) / baseline * 100.0 + 0.0  # + 0.0: no "-0.00%"
    return (pct, None) if math.isfinite(pct) else (None, "the change overflows")


def compare(base: Estimate | None, run: Estimate | None) -> Delta:
    """The delta of two estimated means and whether its 95% interval excludes 0."""
    if base is None or run is None:
        return Delta(None, None, Verdict.NONE, "fewer than 2 samples")
    pct, why = pct_change(base.mean, run.mean)
    if pct is None:
        return Delta(None, None, Verdict.NONE, why)
    va, vb = base.rel_se * base.rel_se, run.rel_se * run.rel_se  # `*` overflows to inf; `**` raises
    if not (math.isfinite(va) and math.isfinite(vb)):
        return Delta(pct, None, Verdict.NONE, "mean is 0" if 0 in (base.mean, run.mean) else "spread too large")
    ratio = run.mean / base.mean
    se = abs(ratio) * math.sqrt(va + vb)
    if se == 0:  # two constant series: any difference is exact
        return Delta(pct, 0.0, Verdict.SIGNIFICANT if pct != 0 else Verdict.WITHIN_NOISE)
    # Welch-Satterthwaite degrees of freedom, on the relative variances
    dof = (va + vb) * (va + vb) / ((va * va / max(base.n_eff - 1, 1)) + (vb * vb / max(run.n_eff - 1, 1)))
    ci = 100.0 * t975(dof) * se
    return Delta(pct, ci, Verdict.SIGNIFICANT if abs(pct) > ci else Verdict.WITHIN_NOISE)


def fmt_pct(pct: float | None) -> str:
    """A signed percentage as in the report's delta tables (`+2.70%`), `-` without a finite one."""
    return "-" if pct is None or not math.isfinite(pct) else f"{pct:+.2f}%"


def fmt_ci(ci: float | None) -> str:
    """The half-width of a delta's 95% interval (`±1.74%`), `-` without one."""
    return "-" if ci is None else f"±{ci:.2f}%"
