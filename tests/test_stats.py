"""Seed statistics: t-intervals against scipy's t-tests and a hand-computed case; verdicts."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from alexnet_jax.tools import stats


def test_hand_computed_interval():
    # 1..5: mean 3, s = sqrt(2.5), t_{4, 0.975} = 2.776 (printed t tables), so the half-width
    # is 2.776 * sqrt(2.5) / sqrt(5) = 2.776 / sqrt(2) = 1.963.
    ci = stats.mean_ci([1, 2, 3, 4, 5])
    assert stats.t_quantile(5) == pytest.approx(2.776, abs=5e-4)
    assert (ci.mean, ci.n) == (3.0, 5)
    assert ci.lo == pytest.approx(3 - 1.963, abs=1e-3)
    assert ci.hi == pytest.approx(3 + 1.963, abs=1e-3)
    assert ci.format() == '3.00 [1.04, 4.96]'


@pytest.mark.parametrize('values', [[0.1, 0.3], [0.012, 0.018, 0.015, 0.02],
                                    list(np.random.default_rng(0).normal(2.0, 0.5, size=10))])
def test_mean_ci_matches_scipy(values):
    expected = scipy_stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    ci = stats.mean_ci(values)
    assert ci.mean == pytest.approx(np.mean(values))
    assert (ci.lo, ci.hi) == pytest.approx((expected.low, expected.high))
    assert ci.n == len(values)


def test_paired_ci_matches_scipy_paired_ttest_on_common_seeds():
    rng = np.random.default_rng(1)
    base = {s: 0.1 + rng.normal(0, 0.01) for s in range(8)}
    ablated = {s: base[s] + 0.004 + rng.normal(0, 0.002) for s in range(8)}
    del ablated[3]          # Seed 3 of the ablated point did not finish,
    base[5] = ''            # and seed 5 of the baseline has no value: both are left out.
    seeds = [s for s in range(8) if s not in (3, 5)]
    expected = scipy_stats.ttest_rel([ablated[s] for s in seeds],
                                     [base[s] for s in seeds]).confidence_interval(0.95)
    ci = stats.paired_ci(base, ablated)
    assert ci.n == len(seeds)
    assert (ci.lo, ci.hi) == pytest.approx((expected.low, expected.high))
    assert ci.mean == pytest.approx(np.mean([ablated[s] - base[s] for s in seeds]))


def test_pairing_removes_shared_seed_noise():
    """Seed noise shared by both points cancels in the paired CI, not in independent means'."""
    shared = [0.0, 0.05, -0.04, 0.08, -0.06]
    base = {s: 0.2 + e for s, e in enumerate(shared)}
    ablated = {s: 0.21 + e + d for s, e, d in zip(range(5), shared, [1e-3, -1e-3, 0, 2e-3, -2e-3])}
    paired = stats.paired_ci(base, ablated)
    assert stats.verdict(paired) == 'ablated worse'
    assert paired.half_width < stats.mean_ci(base.values()).half_width / 10


@pytest.mark.parametrize('lo,hi,expected', [
    (0.001, 0.02, 'ablated worse'),
    (-0.02, -0.001, 'ablated better'),
    (-0.005, 0.015, 'not resolved at n=10: |effect| < 1.50 points'),
    (-0.03, 0.01, 'not resolved at n=10: |effect| < 3.00 points'),
])
def test_verdict(lo, hi, expected):
    ci = stats.Interval((lo + hi) / 2, lo, hi, 10)
    assert stats.verdict(ci, scale=100) == expected


def test_single_seed_has_no_interval():
    ci = stats.mean_ci([0.25, ''])
    assert ci.n == 1 and math.isnan(ci.lo) and ci.format(100) == '25.00'
    assert stats.verdict(ci) == 'no CI at n=1'
    assert stats.mean_ci([]).format() == '-'


def test_ratio_ci_is_the_exponentiated_log_ratio_interval():
    base = {0: 2.0, 1: 4.0, 2: 3.0, 3: 5.0}
    ablated = {0: 12.0, 1: 20.0, 2: 21.0, 3: 25.0, 4: 9.0}  # Seed 4 has no baseline.
    logs = [math.log(ablated[s] / base[s]) for s in range(4)]
    expected = scipy_stats.ttest_1samp(logs, 0.0).confidence_interval(0.95)
    r = stats.ratio_ci(base, ablated)
    assert r.n == 4
    assert r.mean == pytest.approx(math.exp(np.mean(logs)))  # (6 * 5 * 7 * 5) ** (1 / 4)
    assert (r.lo, r.hi) == pytest.approx((math.exp(expected.low), math.exp(expected.high)))
    assert r.lo < r.mean < r.hi
    constant = stats.ratio_ci({0: 1.0, 1: 2.0}, {0: 3.0, 1: 6.0})
    assert (constant.mean, constant.lo, constant.hi) == pytest.approx((3.0, 3.0, 3.0))


def test_two_seeds_never_resolve_an_effect():
    """n=2: a zero-width interval (two equal differences) or one that happens to exclude 0 is
    'not resolved', never better/worse; from n=3 the interval decides."""
    zero_width = stats.paired_ci({0: 0.5, 1: 0.25}, {0: 0.375, 1: 0.125})  # Both d = -0.125.
    assert (zero_width.n, zero_width.lo, zero_width.hi) == (2, -0.125, -0.125)
    assert stats.verdict(zero_width) == 'not resolved: n=2 < 3 seeds'
    two = [-0.010, -0.011]
    assert scipy_stats.ttest_1samp(two, 0.0).confidence_interval(0.95).high < 0  # Excludes 0.
    assert stats.verdict(stats.mean_ci(two)) == 'not resolved: n=2 < 3 seeds'
    three = [-0.010, -0.011, -0.012]
    assert scipy_stats.ttest_1samp(three, 0.0).confidence_interval(0.95).high < 0
    assert stats.verdict(stats.mean_ci(three)) == 'ablated better'


def test_a_nonnegative_quantity_has_no_interval_below_zero():
    """Error rates (or epochs) near 0: the t-interval's lower end, below 0, is clipped at 0."""
    errors = [0.0, 0.0, 0.01]
    expected = scipy_stats.ttest_1samp(errors, 0.0).confidence_interval(0.95)
    assert expected.low < 0
    ci = stats.mean_ci(errors, lower=0.0)
    assert ci.n == 3 and ci.mean == pytest.approx(np.mean(errors))
    assert ci.lo == 0.0 and ci.hi == pytest.approx(expected.high)
    assert ci.format(100) == f'0.33 [0.00, {expected.high * 100:.2f}]'
    far = [0.10, 0.12, 0.11]  # Clear of 0: unchanged.
    expected = scipy_stats.ttest_1samp(far, 0.0).confidence_interval(0.95)
    assert (stats.mean_ci(far, lower=0.0).lo, stats.mean_ci(far, lower=0.0).hi) == pytest.approx(
        (expected.low, expected.high))


def test_report_points_clip_top5_intervals_at_zero():
    """report.summarize's per-point top-5 t-interval (>= 0, like an error rate)."""
    from alexnet_jax.tools import report  # pylint: disable=import-outside-toplevel
    from configs import ablations  # pylint: disable=import-outside-toplevel
    rows = [{'point': 'p', 'seed': s, 'status': 'done', 'reason': '', 'test_top1_error': e,
             'test_top5_error': e, 'epochs_to_threshold': e * 100, 'steps_to_threshold': e * 1e3,
             'epochs_to_50pct': '', 'epochs_to_25pct': e * 100, 'epochs_to_10pct': '',
             'test_correct': ''}
            for s, e in enumerate([0.0, 0.0, 0.01])]
    point, = report.summarize(ablations.get_config('pool'), rows)
    high = scipy_stats.ttest_1samp([0.0, 0.0, 0.01], 0.0).confidence_interval(0.95).high
    assert point['top5'].lo == 0.0 and point['top5'].hi == pytest.approx(high)
    assert point['top1'] is None  # No per-image hits: the table says "seeds only".
    assert point['top1_seeds'].lo == 0.0


def test_the_test_error_interval_counts_the_test_images():
    """Seeds that agree image by image leave a seed-only interval of zero width; the crossed
    standard error is then the binomial one of an error rate on that many images."""
    rng = np.random.default_rng(0)
    miss = (rng.random(400) < 0.1).astype(float)
    errors = np.stack([miss] * 5)
    assert stats.mean_ci(errors.mean(axis=1)).half_width == pytest.approx(0.0, abs=1e-12)
    est = stats.crossed_estimate(errors)
    p = miss.mean()
    assert est.se == pytest.approx(math.sqrt(p * (1 - p) / 399), rel=1e-6)
    assert est.lo < p < est.hi and est.n == 5


def test_the_test_error_interval_counts_the_seeds():
    """Images that agree within a seed: the spread is the seeds' (the t-interval of their means)."""
    per_seed = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    errors = np.repeat(per_seed[:, None], 50, axis=1)
    est = stats.crossed_estimate(errors)
    ci = stats.mean_ci(per_seed)
    assert est.se == pytest.approx(per_seed.std(ddof=1) / math.sqrt(len(per_seed)), rel=1e-6)
    assert (est.lo, est.hi) == pytest.approx((ci.lo, ci.hi), rel=1e-6)  # Satterthwaite: n - 1.


def _crossed(rng, seeds: int, images: int) -> np.ndarray:
    """0/1 misses of a crossed design: image i is missed with probability p_i u_s (hard and
    easy images, better and worse seeds; E = 0.02 exactly) plus the seed x image interaction
    of independent Bernoulli draws."""
    p = 0.6 * rng.beta(0.1, 2.9, size=images)
    u = rng.uniform(0.5, 1.5, size=seeds)
    return (rng.random((seeds, images)) < u[:, None] * p[None, :]).astype(np.float64)


@pytest.mark.parametrize('seeds,images', [(20, 360), (10, 360)])
def test_the_crossed_interval_covers_95_percent_of_simulated_designs(seeds, images):
    """New seeds and new test images each time (true mean error 0.02): the crossed interval
    covers it ~95% of the time; the two-way bootstrap's variance, computed here independently
    (var of the seed x image resampled mean = rows' var / S + columns' var / I), counts the
    interaction twice and is larger."""
    rng = np.random.default_rng(seeds)
    covered, ratios = [], []
    for _ in range(600):
        x = _crossed(rng, seeds, images)
        est = stats.crossed_estimate(x)
        covered.append(est.lo <= 0.02 <= est.hi)
        pigeonhole = (x.mean(axis=1).var() / seeds + x.mean(axis=0).var() / images)
        ratios.append(math.sqrt(pigeonhole) / est.se)
    assert 0.925 <= np.mean(covered) <= 0.975
    assert np.median(ratios) > 1.03


@pytest.mark.parametrize('n,sigma', [(10, 0.1), (20, 0.1), (20, 0.3)])
def test_the_sign_test_mde_has_80_percent_power(n, sigma):
    """Paired log ratios N(log r, sigma): the MDE each simulated design reports (at 5%, from
    its own data), fed back as the true effect, is resolved by the same test ~80% of the time
    (scipy's binomial test on freshly simulated pairs)."""
    rng = np.random.default_rng(n)
    hits = []
    for _ in range(300):
        base = rng.uniform(3, 5, size=n)
        logs = rng.normal(0, sigma, size=n)
        est = stats.paired_ratio(dict(enumerate(base)), dict(enumerate(base * np.exp(logs))))
        mde = stats.mde(est, 1)
        new = rng.normal(math.log(mde), sigma, size=n)
        slower = int(np.sum(new > 0))
        hits.append(scipy_stats.binomtest(slower, n).pvalue < 0.05)
    assert 0.7 <= np.mean(hits) <= 0.9


@pytest.mark.parametrize('n,level,expected', [
    (5, 0.05, math.inf),  # 5 of 5 gives p = 0.0625: no outcome reaches 5%.
    (10, 0.05 / 40, math.inf),  # 10 of 10: 0.00195 > 0.00125.
])
def test_a_sign_test_that_cannot_reach_its_level_has_no_mde(n, level, expected):
    assert stats.sign_test_mde(n, 0.1, level) == expected


def test_the_paired_ratio_interval_inverts_the_sign_test():
    """The order-statistic interval of the per-seed ratios: a ratio inside it is not rejected by
    the sign test at 5%, one just outside is (scipy's binomial test, by hand)."""
    rng = np.random.default_rng(1)
    base = {s: float(v) for s, v in enumerate(rng.uniform(3, 5, size=12))}
    ablated = {s: v * float(np.exp(rng.normal(0.2, 0.1))) for s, v in base.items()}
    est = stats.paired_ratio(base, ablated)
    ratios = np.array([ablated[s] / base[s] for s in base])
    p_at = lambda r: scipy_stats.binomtest(int(np.sum(ratios > r)), len(ratios)).pvalue
    assert est.value == np.sort(ratios)[5]
    assert p_at(est.lo * 1.0001) >= 0.05 and p_at(est.hi * 0.9999) >= 0.05
    assert p_at(est.lo * 0.9999) < 0.05 and p_at(est.hi * 1.0001) < 0.05


def test_median_with_censored_runs_and_its_order_statistic_interval():
    times = [float(t) for t in range(1, 19)] + [math.inf, math.inf]  # 2 of 20 never reached.
    est = stats.median_ci(times)
    assert est.value == 10.0 and est.n == 20
    # Independently: the widest symmetric order statistics x_(k), x_(n-k+1) whose binomial
    # coverage P(k <= B <= n - k), B ~ Bin(20, 1/2), is at least 95%.
    k = max(j for j in range(1, 11) if scipy_stats.binom.cdf(20 - j, 20, 0.5)
            - scipy_stats.binom.cdf(j - 1, 20, 0.5) >= 0.95)
    assert (est.lo, est.hi) == (times[k - 1], times[20 - k])
    assert stats.median_ci([1.0, math.inf, math.inf]).value == math.inf  # Half never reached.


def test_censored_runs_count_in_a_speed_effect():
    """Ablated runs that never reach the threshold are slower, not missing: dropping them would
    leave 2 pairs and no verdict; counted, all 10 pairs say slower."""
    base = {s: 2.0 + 0.1 * s for s in range(10)}
    ablated = {s: (3.0 + 0.1 * s if s < 2 else math.inf) for s in range(10)}
    est = stats.paired_ratio(base, ablated)
    assert est.n == 10 and est.value == math.inf  # 8 of 10 ratios are inf.
    assert est.p == pytest.approx(scipy_stats.binomtest(10, 10).pvalue)
    assert stats.ratio_ci(base, {s: v for s, v in ablated.items() if v < math.inf}).n == 2
    both_never = stats.paired_ratio({0: math.inf, 1: math.inf}, {0: math.inf, 1: math.inf})
    assert math.isnan(both_never.p)  # Nothing was compared.


def test_holm_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> monotone 0.06.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5]) == [0.5] and stats.holm([0.6, 0.7]) == [1.0, 1.0]


@pytest.mark.parametrize('tests', [1, 10])
def test_the_test_error_mde_is_its_wald_tests(tests):
    """(z_{1 - alpha / 2m} + z_0.8) standard errors: an effect of that size is found with 80%
    power by the two-sided test at Holm's first level."""
    e = stats.Estimate(0.0, -1, 1, 10, 1.0, 0.004)
    z = scipy_stats.norm.ppf(1 - 0.05 / (2 * tests))
    assert stats.mde(e, tests) == pytest.approx((z + scipy_stats.norm.ppf(0.8)) * 0.004)
    assert scipy_stats.norm.sf(z - stats.mde(e, tests) / 0.004) == pytest.approx(0.8)


def test_few_seeds_keep_their_few_degrees_of_freedom_and_a_sign_test_of_3_has_no_mde(tmp_path):
    """Three seeds all on one side of 0: the crossed t-test keeps the seeds' few degrees of
    freedom (p ~ 0.05, not the ~0 of a bootstrap that never leaves the seeds' range). A sign
    test of 3 pairs cannot reach 5%: its MDE is not a number."""
    from alexnet_jax.tools import report  # pylint: disable=import-outside-toplevel
    from configs import ablations  # pylint: disable=import-outside-toplevel
    config = ablations.get_config('pool')
    rows = []
    for point, extra in (('pool3s2', 0), ('pool2s2', 1)):
        for s in range(3):
            hits = ['1'] * 100
            for i in range(10 * extra * (s + 1)):
                hits[i] = '0'  # pool2s2 misses 10, 20, 30 images, pool3s2 none.
            rows.append({'point': point, 'seed': s, 'status': 'done', 'reason': '',
                         'test_top1_error': hits.count('0') / 100, 'test_top5_error': 0.0,
                         'epochs_to_50pct': 1.0 + extra, 'epochs_to_25pct': 2.0 + extra,
                         'epochs_to_10pct': 3.0 + extra, 'test_correct': ''.join(hits)})
    found = report.effects(config, report.summarize(config, rows))
    top1 = next(e for e in found if e['metric'] == 'top1')
    assert 2 < top1['estimate'].df < 5 and top1['estimate'].p > 0.01
    speed = next(e for e in found if e['metric'] == 0.25)
    assert speed['mde'] == math.inf and 'no MDE' in speed['verdict']


def test_a_failed_run_counts_as_never_reaching_after_it_diverged():
    from alexnet_jax.tools import report  # pylint: disable=import-outside-toplevel
    from configs import ablations  # pylint: disable=import-outside-toplevel
    rows = [{'point': 'p', 'seed': s, 'status': status, 'reason': '', 'test_top1_error': 0.1,
             'test_top5_error': 0.0, 'epochs_to_50pct': e, 'epochs_to_25pct': '',
             'epochs_to_10pct': '', 'test_correct': ''}
            for s, (status, e) in enumerate([('done', 1.0), ('failed', 2.0), ('failed', '')])]
    point, = report.summarize(ablations.get_config('pool'), rows)
    assert point['times'][0.5] == {0: 1.0, 1: 2.0, 2: math.inf}  # Counted, not dropped.
    assert point['done'] == 1 and point['failed'] == 2
