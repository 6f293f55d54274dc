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
`significant` when that interval excludes 0, else `within noise`.

A leg run with repeats (`pooled`) is a random-effects view of them: repeat i's tail mean is the
leg's true mean plus a between-repeat offset (seed, placement on the node, the machine's mood;
variance tau^2) plus its own window's noise (variance se_i^2, from `estimate`). The leg's mean is
the mean of the k repeat means, whose variance is tau^2 / k + mean(se_i^2) / k. tau^2 is estimated
by the method of moments (the repeat means' variance less what their windows explain, never below
0), and the degrees of freedom by Welch-Satterthwaite: k - 1 for the between-repeat part, the
windows' own for the rest. With the repeats' spread well inside their windows' noise the interval
rests on the windows; with a spread beyond it, on the k repeats (t with k - 1 degrees of freedom).
Few repeats know tau poorly: `Spread.between_hi` is its 95% upper bound (chi-square with k - 1
degrees of freedom), which the report prints beside the interval. Over synthetic repeats (tests/
test_stats.py) the interval holds the true mean about 96% of the time with tau = 0; with tau as
large as one window's noise, 90% with 2 repeats and 93% with 3 to 5; with tau 3 times that, 83%
with 2 repeats and 88% with 3: 2 repeats often happen to agree, and only the upper bound says
how far apart they could have been.

`repeats_to_resolve` answers a `within noise` verdict: how many repeats of each leg would give the
interval an 80% chance of excluding 0 if the observed difference is real (the usual power
calculation: |delta| = (z 0.975 + z 0.8) x its standard error), the per-repeat variance being the
one observed (tau^2 + the windows' noise; for a single run only its window's, so a lower bound).

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
POWER_Z = 1.959964 + 0.841621  # z 0.975 + z 0.8: a 95% interval that excludes 0 four times in five
RESOLVE_MAX = 1000  # repeats per leg beyond which a difference is called unresolvable by repeats

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond 30 the
# Cornish-Fisher expansion around the normal quantile is exact to 1e-4.
_T975 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)
_Z975 = 1.959964
# The 2.5% quantiles of chi-square for 1..30 degrees of freedom; beyond 30 the Wilson-Hilferty
# cube-root approximation is exact to 1e-3 relative.
_CHI2_025 = (
    0.000982069,
    0.0506356,
    0.215795,
    0.484419,
    0.831212,
    1.23734,
    1.68987,
    2.17973,
    2.70039,
    3.24697,
    3.81575,
    4.40379,
    5.00875,
    5.62873,
    6.26214,
    6.90766,
    7.56419,
    8.23075,
    8.90652,
    9.59078,
    10.2829,
    10.9823,
    11.6886,
    12.4012,
    13.1197,
    13.8439,
    14.5734,
    15.3079,
    16.0471,
    16.7908,
)


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


def chi2_025(dof: int) -> float:
    """The 2.5% quantile of chi-square with `dof` (>= 1) degrees of freedom."""
    nu = max(1, int(dof))
    if nu <= len(_CHI2_025):
        return _CHI2_025[nu - 1]
    c = 2 / (9 * nu)
    return nu * (1 - c - _Z975 * math.sqrt(c)) ** 3


@dataclass(frozen=True)
class Spread:
    """How a leg's repeats vary beyond what each one's tail window explains (see `pooled`)."""

    repeats: int  # k, the repeats the mean rests on
    between: float  # the between-repeat standard deviation, estimated (>= 0)
    between_hi: float  # its 95% upper bound: few repeats know it poorly
    within: float  # the root mean square of the repeats' own standard errors (0: one figure per run)

    @property
    def run_var(self) -> float:
        """The variance of one repeat's mean: between-repeat plus its window's."""
        return self.between * self.between + self.within * self.within


@dataclass(frozen=True)
class Estimate:
    """The mean of a series with its spread and the half-width of its 95% interval."""

    mean: float
    std: float  # sample standard deviation of the values (a leg's repeats: of their means)
    n: int  # how many values
    n_eff: float  # the number of independent values they are worth
    half_width: float  # 95% interval of the mean: mean +- half_width
    se: float = math.nan  # standard error of the mean (nan: std / sqrt(n_eff))
    dof: float = math.nan  # its degrees of freedom (nan: n_eff - 1)
    spread: Spread | None = None  # a leg's repeats: how they vary (None: one run's tail window)

    def __post_init__(self) -> None:
        if math.isnan(self.se):
            object.__setattr__(self, "se", self.std / math.sqrt(self.n_eff))
        if math.isnan(self.dof):
            object.__setattr__(self, "dof", self.n_eff - 1)

    @property
    def rel_se(self) -> float:
        """Standard error of the mean relative to the mean (inf when the mean is 0)."""
        return self.se / abs(self.mean) if self.mean else math.inf

    @property
    def runs(self) -> int:
        """The runs the mean rests on: a leg's repeats, else 1."""
        return self.spread.repeats if self.spread is not None else 1

    @property
    def run_var(self) -> float:
        """The variance of one run's mean: for repeats between-repeat plus window noise; for a
        single run its window's alone (the run-to-run part is not known from one run)."""
        return self.spread.run_var if self.spread is not None else self.se * self.se


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
    """Mean and 95% interval of independent values with nothing known of each one's own noise
    (one figure per repeat: peak memory); None for fewer than 2. The same as `pooled` of bare
    figures."""
    return pooled(means)


def pooled(parts: Sequence[Estimate | float | None]) -> Estimate | None:
    """A leg's mean over its repeats with its 95% interval, within-run and between-run spread
    combined (see the module's docstring). Each part is a repeat's tail-window estimate, or a
    bare figure (one sample per run: its own noise unknown, taken as 0). None for fewer than 2
    finite ones."""
    kept = [p for p in parts if p is not None and math.isfinite(p.mean if isinstance(p, Estimate) else p)]
    k = len(kept)
    if k < 2:
        return None
    means = [p.mean if isinstance(p, Estimate) else float(p) for p in kept]
    own = [p.se * p.se if isinstance(p, Estimate) else 0.0 for p in kept]
    dofs = [p.dof for p in kept if isinstance(p, Estimate)]
    mean, std = _mean_std(means)
    var_means = std * std
    within = math.fsum(own) / k
    between2 = max(0.0, var_means - within)
    a, b = between2 / k, within / k  # the variance of the leg's mean: between-repeat part, windows' part
    se = math.sqrt(a + b)
    if not math.isfinite(se):
        dof = float(k - 1)
    elif a + b == 0:
        dof = math.inf
    else:
        nu_w = math.fsum(dofs) if len(dofs) == k else math.inf
        den = a * a / (k - 1) + (b * b / nu_w if math.isfinite(nu_w) and nu_w > 0 else 0.0)
        dof = (a + b) * (a + b) / den if den > 0 else math.inf
    hi2 = (k - 1) * var_means / chi2_025(k - 1) - within
    spread = Spread(k, math.sqrt(between2), math.sqrt(max(0.0, hi2)), math.sqrt(within))
    half = t975(min(dof, 1e9)) * se
    return Estimate(mean, std, k, float(k), half, se=se, dof=dof, spread=spread)


@dataclass(frozen=True)
class Resolve:
    """The repeats of each leg that would resolve a `within noise` delta if it is real."""

    repeats: int | None  # per leg; None: more than RESOLVE_MAX (or the delta is 0)
    more: int  # beyond the most either leg has now
    at_least: bool  # a side is a single run: its run-to-run spread is unknown, so this is a floor


@dataclass(frozen=True)
class Delta:
    """run against baseline, in percent of the baseline, with its 95% interval and verdict."""

    pct: float | None  # 100 * (run / baseline - 1); None when it cannot be computed
    ci_pct: float | None  # half-width of the 95% interval of pct; None without spread
    verdict: Verdict
    why: str | None = None  # why pct or the verdict is missing
    runs: tuple[int, int] = (1, 1)  # the runs each side rests on: (baseline's, run's); >1: repeats
    resolve: Resolve | None = None  # a `within noise` verdict: the repeats that would resolve it


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
    runs = (base.runs, run.runs)
    pct, why = pct_change(base.mean, run.mean)
    if pct is None:
        return Delta(None, None, Verdict.NONE, why, runs)
    va, vb = base.rel_se * base.rel_se, run.rel_se * run.rel_se  # `*` overflows to inf; `**` raises
    if not (math.isfinite(va) and math.isfinite(vb)):
        return Delta(
            pct, None, Verdict.NONE, "mean is 0" if 0 in (base.mean, run.mean) else "spread too large", runs
        )
    ratio = run.mean / base.mean
    se = abs(ratio) * math.sqrt(va + vb)
    if se == 0:  # two constant series: any difference is exact
        return Delta(pct, 0.0, Verdict.SIGNIFICANT if pct != 0 else Verdict.WITHIN_NOISE, runs=runs)
    # Welch-Satterthwaite degrees of freedom, on the relative variances
    dof = (va + vb) * (va + vb) / ((va * va / max(base.dof, 1)) + (vb * vb / max(run.dof, 1)))
    ci = 100.0 * t975(dof) * se
    if abs(pct) > ci:
        return Delta(pct, ci, Verdict.SIGNIFICANT, runs=runs)
    return Delta(pct, ci, Verdict.WITHIN_NOISE, runs=runs, resolve=repeats_to_resolve(base, run))


def repeats_to_resolve(base: Estimate, run: Estimate) -> Resolve:
    """How many repeats of each leg would give the delta's 95% interval an 80% chance of
    excluding 0, if the observed difference is the true one: k with
    |run / base - 1| = POWER_Z x ratio x sqrt((base run_var / base^2 + run run_var / run^2) / k)."""
    now = max(base.runs, run.runs)
    at_least = base.spread is None or run.spread is None
    ratio = run.mean / base.mean
    diff = abs(ratio - 1)
    unit = base.run_var / (base.mean * base.mean) + run.run_var / (run.mean * run.mean)
    if diff == 0 or not math.isfinite(unit):
        return Resolve(None, 0, at_least)
    need = POWER_Z * POWER_Z * ratio * ratio * unit / (diff * diff)
    if not math.isfinite(need) or need > RESOLVE_MAX:
        return Resolve(None, 0, at_least)
    k = max(2, math.ceil(need - 1e-9), now + 1)
    return Resolve(k, k - now, at_least)


def fmt_pct(pct: float | None) -> str:
    """A signed percentage as in the report's delta tables (`+2.70%`), `-` without a finite one."""
    return "-" if pct is None or not math.isfinite(pct) else f"{pct:+.2f}%"


def fmt_ci(ci: float | None) -> str:
    """The half-width of a delta's 95% interval (`±1.74%`), `-` without one."""
    return "-" if ci is None else f"±{ci:.2f}%"


def fmt_runs(d: Delta) -> str:
    """What a delta's interval rests on when repeats are in it: `n=2 repeats` (the run's),
    `n=3 repeats vs the baseline's 2`; "" for two single runs (their tail windows)."""
    base, run = d.runs
    if base == 1 and run == 1:
        return ""
    if base == 1:
        return f"n={run} repeats"
    if run == 1:
        return f"n=1 run vs the baseline's {base} repeats"
    return f"n={run} repeats vs the baseline's {base}"


def fmt_resolve(r: Resolve | None) -> str:
    """A `within noise` verdict's way out: `about 6 repeats of each leg (4 more)`, `at least ...`
    when a side is a single run, or why repeats will not do."""
    if r is None:
        return ""
    if r.repeats is None:
        return f"more than {RESOLVE_MAX} repeats of each leg: too small a difference for repeats to resolve"
    word = "at least" if r.at_least else "about"
    return f"{word} {r.repeats} repeats of each leg ({r.more} more)"
