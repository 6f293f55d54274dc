"""The 95% intervals of cockpit.stats hold the truth about 95% of the time, on series of known
spread and correlation; verdicts separate real differences from noise."""

import math
import random

import pytest

from cockpit import stats
from cockpit.vocab import Verdict


def ar1(rng: random.Random, n: int, phi: float, mean: float = 0.0, sd: float = 1.0) -> list[float]:
    """n steps of a stationary AR(1) series: x_t = phi * x_(t-1) + noise."""
    x = rng.gauss(0, 1) / math.sqrt(1 - phi * phi)
    out = []
    for _ in range(n):
        x = phi * x + rng.gauss(0, 1)
        out.append(mean + sd * x * math.sqrt(1 - phi * phi))
    return out


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.5])
def test_interval_covers_the_true_mean_about_95_percent(phi):
    rng = random.Random(1234 + int(phi * 10))
    trials, hits = 1500, 0
    for _ in range(trials):
        e = stats.estimate(ar1(rng, 50, phi, mean=100.0, sd=5.0))
        hits += abs(e.mean - 100.0) <= e.half_width
    assert 0.92 <= hits / trials <= 0.975


def test_correlation_widens_the_interval():
    rng = random.Random(7)
    iid = [stats.estimate(ar1(rng, 50, 0.0)).half_width for _ in range(300)]
    corr = [stats.estimate(ar1(rng, 50, 0.6)).half_width for _ in range(300)]
    assert sum(corr) / len(corr) > 1.5 * sum(iid) / len(iid)


def test_same_config_is_within_noise_about_95_percent():
    rng = random.Random(99)
    trials = 1000
    noise = sum(
        stats.compare(stats.estimate(ar1(rng, 50, 0.3, 800.0, 40.0)),
                      stats.estimate(ar1(rng, 50, 0.3, 800.0, 40.0))).verdict == Verdict.WITHIN_NOISE
        for _ in range(trials)
    )
    assert 0.92 <= noise / trials <= 0.985


def test_a_real_difference_is_significant_and_its_interval_covers_it():
    rng = random.Random(5)
    base = stats.estimate(ar1(rng, 50, 0.2, 800.0, 8.0))
    run = stats.estimate(ar1(rng, 50, 0.2, 824.0, 8.0))  # +3%, spread 1%
    d = stats.compare(base, run)
    assert d.verdict == Verdict.SIGNIFICANT
    assert abs(d.pct - 3.0) <= d.ci_pct
    assert 0 < d.ci_pct < 1.5


def test_t_quantiles():
    assert stats.t975(1) == pytest.approx(12.7062)
    assert stats.t975(10) == pytest.approx(2.2281)
    assert stats.t975(30) == pytest.approx(2.0423)
    assert stats.t975(60) == pytest.approx(2.0003, abs=2e-4)
    assert stats.t975(1000) == pytest.approx(1.9623, abs=2e-4)
    assert stats.t975(0.2) == stats.t975(1)  # fewer than 1 degree of freedom reads as 1
    assert stats.t975(2.5) == pytest.approx((4.3027 + 3.1824) / 2)


def test_degenerate_inputs_give_no_verdict_never_nan():
    assert stats.estimate([]) is None
    assert stats.estimate([3.0]) is None
    assert stats.estimate([1.0, math.nan, math.inf]) is None  # one finite value left
    const = stats.estimate([5.0] * 10)
    assert const.half_width == 0 and const.std == 0
    assert stats.compare(const, const).verdict == Verdict.WITHIN_NOISE
    assert stats.compare(const, stats.estimate([6.0] * 10)).verdict == Verdict.SIGNIFICANT
    zero = stats.estimate([0.0, 0.0, 0.0])
    d = stats.compare(zero, const)
    assert (d.pct, d.verdict, d.why) == (None, Verdict.NONE, "the baseline's figure is 0")
    d = stats.compare(None, const)
    assert d.pct is None and d.verdict == Verdict.NONE and d.why
    assert stats.pct_change(math.inf, 1.0) == (None, "the baseline's figure is inf")
    assert stats.fmt_pct(None) == "-" and stats.fmt_ci(None) == "-"
    assert stats.fmt_pct(2.7) == "+2.70%" and stats.fmt_pct(-2.934) == "-2.93%"
    assert stats.fmt_ci(1.744) == "±1.74%"


def test_repeats_use_the_spread_between_them():
    e = stats.across([100.0, 104.0, 96.0])
    assert e.mean == pytest.approx(100.0) and e.n_eff == 3
    assert e.half_width == pytest.approx(stats.t975(2) * 4.0 / math.sqrt(3))
    assert stats.across([1.0]) is None


def test_huge_values_give_an_infinite_spread_and_no_verdict_never_an_overflow():
    """A step time of 2.7e154 ms (garbage in a log): squaring it overflows; the estimate's spread
    is inf and the comparison says why there is no interval."""
    huge = stats.estimate([0.0, 2.6815615859885194e154, 1.0])
    assert huge is not None and math.isinf(huge.std) and math.isinf(huge.half_width)
    small = stats.estimate([1.0, 2.0, 3.0])
    for d in (stats.compare(small, huge), stats.compare(huge, small)):
        assert d.ci_pct is None and d.verdict == Verdict.NONE and d.why == "spread too large"
