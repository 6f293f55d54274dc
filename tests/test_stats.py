"""The 95% intervals of cockpit.stats hold the truth about 95% of the time, on series of known
spread and correlation; verdicts separate real differences from noise."""

import math
import random
import statistics

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
        stats.compare(
            stats.estimate(ar1(rng, 50, 0.3, 800.0, 40.0)), stats.estimate(ar1(rng, 50, 0.3, 800.0, 40.0))
        ).verdict
        == Verdict.WITHIN_NOISE
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


def _chi2_cdf(x: float, k: int) -> float:
    """Chi-square's CDF for an integer k, in closed form (the series of the regularized gamma)."""
    if k % 2 == 0:
        term, total = 1.0, 1.0
        for j in range(1, k // 2):
            term *= (x / 2) / j
            total += term
        return 1 - math.exp(-x / 2) * total
    total = math.erf(math.sqrt(x / 2))
    term = math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
    for j in range(1, (k + 1) // 2):
        total -= term
        term *= x / (2 * j + 1)
    return total


def test_chi_square_quantiles():
    for k in (1, 2, 3, 7, 30, 31, 60):
        assert _chi2_cdf(stats.chi2_025(k), k) == pytest.approx(0.025, abs=2e-4)


def _repeats(rng: random.Random, k: int, between: float, mean: float = 100.0) -> list[stats.Estimate]:
    """k repeats of a leg: each a 50-step AR(1) window (sd 10: its mean's noise about 1.9) around
    the leg's mean plus its own between-repeat offset."""
    return [stats.estimate(ar1(rng, 50, 0.3, mean + rng.gauss(0, between), 10.0)) for _ in range(k)]


@pytest.mark.parametrize(
    "k, between, at_least", [(2, 0.0, 0.93), (2, 1.0, 0.9), (2, 1.9, 0.87), (3, 1.9, 0.89), (5, 1.9, 0.89)]
)
def test_repeats_interval_combines_within_and_between_spread(k, between, at_least):
    """A leg's mean over its repeats: its interval holds the true mean about 95% of the time when
    the repeats differ only by their windows' noise, and about 90% or more with a between-repeat
    spread as large as that noise (the bounds leave room for 600 trials' own noise)."""
    rng = random.Random(11 * k + int(10 * between))
    trials = 600
    hits = sum(
        abs(e.mean - 100.0) <= e.half_width
        for e in (stats.pooled(_repeats(rng, k, between)) for _ in range(trials))
    )
    assert at_least <= hits / trials <= 0.99


def test_two_repeats_that_agree_rest_on_their_windows_not_on_t_with_one_degree_of_freedom():
    """2 repeats: the spread of their two means alone (t with 1 degree of freedom) gave ±132%;
    when they differ by what their windows' noise explains, the interval rests on the windows."""
    rng = random.Random(4)
    widths, naive = [], []
    for _ in range(200):
        reps = _repeats(rng, 2, 0.0)
        widths.append(stats.pooled(reps).half_width)
        naive.append(stats.across([r.mean for r in reps]).half_width)
        assert stats.pooled(reps).spread.repeats == 2
    widths.sort(), naive.sort()
    assert widths[100] < 4.0 < naive[100]  # the medians: about one window's interval against 6 times it
    e = stats.pooled(reps)
    assert e.spread.between_hi > e.spread.between and e.spread.within > 0 and e.runs == 2
    # repeats far apart beyond their windows: the interval rests on the 2 repeats (t, 1 dof)
    far = stats.pooled(
        [stats.estimate([100.0, 101.0, 100.5, 100.2]), stats.estimate([140.0, 141.0, 140.5, 140.2])]
    )
    assert far.dof == pytest.approx(1.0, rel=0.01) and far.half_width > 100
    assert far.spread.between == pytest.approx(far.std * math.sqrt(1 - (far.spread.within / far.std) ** 2))
    # bare figures (one per repeat, no window: peak memory) are the classic interval of k values
    bare = stats.pooled([100.0, 104.0, 96.0])
    assert bare.dof == 2 and bare.half_width == pytest.approx(stats.t975(2) * 4.0 / math.sqrt(3))
    assert stats.pooled([1.0, None, math.nan]) is None


def test_repeats_to_resolve_a_within_noise_verdict_give_it_80_percent_power():
    """The repeats a `within noise` verdict suggests make the interval exclude 0 in about 80% of
    fresh trials when the observed difference and spreads are the true ones (here +3%, windows'
    noise 1.9%, between-repeat 0.5%)."""
    rng = random.Random(21)
    se = statistics.pstdev([stats.estimate(ar1(rng, 50, 0.3, 100.0, 10.0)).mean for _ in range(400)])

    def leg(mean: float) -> stats.Estimate:  # a leg of 2 repeats whose estimates are the truth
        return stats.Estimate(mean, 1.0, 2, 2.0, 1.0, se=1.0, dof=50.0, spread=stats.Spread(2, 0.5, 20.0, se))

    r = stats.repeats_to_resolve(leg(100.0), leg(103.0))
    assert not r.at_least and 4 <= r.repeats <= 12 and r.more == r.repeats - 2
    assert stats.fmt_resolve(r) == f"about {r.repeats} repeats of each leg ({r.more} more)"
    trials = 200
    sig = sum(
        stats.compare(
            stats.pooled(_repeats(rng, r.repeats, 0.5)), stats.pooled(_repeats(rng, r.repeats, 0.5, 103.0))
        ).verdict
        == Verdict.SIGNIFICANT
        for _ in range(trials)
    )
    assert 0.68 <= sig / trials <= 0.93
    # from measured repeats: a within-noise delta of two legs of 2 repeats says how many would do
    found = None
    while found is None:
        d = stats.compare(stats.pooled(_repeats(rng, 2, 0.5)), stats.pooled(_repeats(rng, 2, 0.5, 101.0)))
        found = d if d.verdict == Verdict.WITHIN_NOISE and d.pct > 0.5 else None
    assert found.resolve.repeats > 2 and not found.resolve.at_least
    assert stats.fmt_runs(found) == "n=2 repeats vs the baseline's 2"
    # a single run on a side: its run-to-run spread is unknown, the suggestion a floor
    one = stats.compare(
        stats.estimate([100.0, 102.0, 99.0, 101.0]), stats.estimate([101.0, 103.0, 100.0, 102.0])
    )
    assert one.verdict == Verdict.WITHIN_NOISE and one.resolve.at_least
    assert stats.fmt_resolve(one.resolve).startswith("at least ") and stats.fmt_runs(one) == ""
    same = stats.compare(stats.estimate([1.0, 2.0, 3.0]), stats.estimate([1.0, 2.0, 3.0]))
    assert same.resolve.repeats is None and "too small a difference" in stats.fmt_resolve(same.resolve)
