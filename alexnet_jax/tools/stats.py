"""Statistics for ablation grids. tools/report.py uses the second half: test errors with the
crossed (seeds x test images) standard error, medians and paired ratios of epochs to a threshold
with censored runs counted and the sign test, Holm's correction and each test's own minimum
detectable effect. The first half (the
t-intervals below) gives top-5's per-point interval, the fallback where a run kept no per-image
results, and the tools that summarise seeds.

Seed s of every grid point shares the data order and (where shapes agree) the initial weights
and dropout keys, so an effect is measured seed by seed: d_s = ablated_s - baseline_s, and its
confidence interval is the t-interval of the d_s (a paired t-interval), far narrower than two
independent means' when the seeds' noise is shared.

Verdict of an effect whose 95% CI is [lo, hi] (for metrics where lower is better, e.g. error
or epochs to a target) over n seeds:
  n < 2             "no CI at n=N"
  n < MIN_SEEDS     "not resolved: n=2 < 3 seeds": two values give an interval 12.7 times their
                    difference wide (t_1 = 12.7) or, when they agree (two equal epoch counts),
                    [d, d] of zero width; neither decides anything
  lo > 0            "ablated worse"
  hi < 0            "ablated better"
  otherwise         "not resolved at n=N: |effect| < X" with X = max(|lo|, |hi|): the CI holds
                    0, and every effect it admits is smaller than X in magnitude, so X is how
                    small the effect has been shown to be.
"""

import dataclasses
import math

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
MIN_SEEDS = 3  # The fewest values whose t-interval can decide a verdict (module doc).


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean and its two-sided t confidence interval over n values (lo = hi = nan for n < 2)."""
    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """'12.34 [11.90, 12.78]'; '-' with no values; the bare mean when n = 1."""
        if self.n == 0:
            return '-'
        m = f'{self.mean * scale:.{digits}f}'
        if self.n < 2:
            return m
        return f'{m} [{self.lo * scale:.{digits}f}, {self.hi * scale:.{digits}f}]'


NONE = Interval(math.nan, math.nan, math.nan, 0)


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided, n - 1 degrees of freedom."""
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))


def mean_ci(values, confidence: float = CONFIDENCE, lower: float | None = None) -> Interval:
    """mean ± t_{n-1} * s / sqrt(n) of `values` ('' and None skipped), clipped at `lower`: the
    least value the quantity can take (0 for an error rate or epochs), as no mean is below it."""
    x = np.asarray([float(v) for v in values if v is not None and v != ''], np.float64)
    n = len(x)
    if n == 0:
        return NONE
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = t_quantile(n, confidence) * float(x.std(ddof=1)) / math.sqrt(n)
    lo = mean - half if lower is None else max(mean - half, lower)
    return Interval(mean, lo, mean + half, n)


def paired_differences(baseline: dict, ablated: dict) -> dict:
    """{seed: ablated - baseline} over the seeds both have a value for."""
    ok = lambda v: v is not None and v != '' and math.isfinite(float(v))
    return {s: float(ablated[s]) - float(baseline[s])
            for s in sorted(baseline) if s in ablated and ok(baseline[s]) and ok(ablated[s])}


def paired_ci(baseline: dict, ablated: dict, confidence: float = CONFIDENCE) -> Interval:
    """The paired t-interval of ablated - baseline, by seed."""
    return mean_ci(paired_differences(baseline, ablated).values(), confidence)


def verdict(ci: Interval, scale: float = 1.0, unit: str = 'points', digits: int = 2) -> str:
    """'ablated worse' / 'ablated better' / 'not resolved at n=N: |effect| < X unit' (module doc)."""
    if ci.n < 2:
        return f'no CI at n={ci.n}'
    if ci.n < MIN_SEEDS:
        return f'not resolved: n={ci.n} < {MIN_SEEDS} seeds'
    if ci.lo > 0:
        return 'ablated worse'
    if ci.hi < 0:
        return 'ablated better'
    bound = max(abs(ci.lo), abs(ci.hi)) * scale
    return f'not resolved at n={ci.n}: |effect| < {bound:.{digits}f} {unit}'


def ratio_ci(baseline: dict, ablated: dict, confidence: float = CONFIDENCE) -> Interval:
    """Geometric mean of ablated / baseline by seed, with the exponentiated t-interval of the
    log ratios: 2x and 0.5x are equally far from 1. Seeds without two positive values left out."""
    ci = mean_ci(list(log_ratios(baseline, ablated).values()), confidence)
    if ci.n == 0:
        return NONE
    return Interval(math.exp(ci.mean), math.exp(ci.lo), math.exp(ci.hi), ci.n)


def log_ratios(baseline: dict, ablated: dict) -> dict:
    """{seed: log(ablated / baseline)} over the seeds with two positive values."""
    return {s: math.log(float(ablated[s]) / float(baseline[s]))
            for s in paired_differences(baseline, ablated)
            if float(ablated[s]) > 0 and float(baseline[s]) > 0}


# --- Every source of noise: test images and seeds, censored speeds, many verdicts -------------
# Each verdict, its interval and its minimum detectable effect (MDE) come from one test:
# - test error: a Wald/t test whose standard error is the crossed (seeds x test images)
#   random-effects one (crossed_estimate);
# - epochs to a threshold: the paired sign test of the per-seed ratios with censored runs
#   counted, its interval the order statistics that invert it, its MDE from its exact binomial
#   power (paired_ratio, sign_test_mde).

ALPHA = 1 - CONFIDENCE
POWER = 0.8  # Of the minimum detectable effect.


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A statistic with its 95% interval and two-sided p-value (of "no effect"), from one test
    (`kind`): 'wald' (se: the standard error; df its degrees of freedom) or 'sign' (se: the
    standard deviation of the finite log ratios, the noise the sign test's power is computed
    at); n: seeds (or pairs) used."""
    value: float
    lo: float
    hi: float
    n: int
    p: float = math.nan
    se: float = math.nan
    seeds_only: bool = False  # A t-interval over seeds: no per-image results.
    kind: str = 'wald'
    df: float = math.inf


NO_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0)


def crossed_variance(x) -> tuple:
    """(variance of the grand mean, Satterthwaite degrees of freedom) of `x` [seeds, images]
    under the crossed random-effects model x_si = mu + a_s + b_i + e_si, from the two-way ANOVA
    mean squares: (MS_seeds + MS_images - MS_residual) / (S I), each component clipped at 0.
    Resampling seeds and images together would count e_si twice (once in each margin)."""
    x = np.asarray(x, np.float64)
    n_s, n_i = x.shape
    rows, cols, grand = x.mean(axis=1), x.mean(axis=0), x.mean()
    ms_s = n_i * np.sum((rows - grand) ** 2) / max(n_s - 1, 1)
    ms_i = n_s * np.sum((cols - grand) ** 2) / max(n_i - 1, 1)
    resid = x - rows[:, None] - cols[None, :] + grand
    ms_e = np.sum(resid ** 2) / max((n_s - 1) * (n_i - 1), 1)
    parts = [(max(ms_s - ms_e, 0.0), ms_s, n_s - 1), (max(ms_i - ms_e, 0.0), ms_i, n_i - 1),
             (ms_e, ms_e, (n_s - 1) * (n_i - 1))]
    var = sum(v for v, _, _ in parts) / (n_s * n_i)
    # Satterthwaite on the mean squares that carry the variance (a clipped one carries none).
    terms = [(ms, df) for (v, ms, df), sign in zip(parts, (1, 1, -1)) if v > 0 or sign < 0]
    num = (var * n_s * n_i) ** 2
    den = sum(ms ** 2 / df for ms, df in terms if df > 0)
    return float(var), float(num / den) if den > 0 else math.inf


def crossed_estimate(errors) -> Estimate:
    """Mean of `errors` [seeds, images] (a point's 0/1 misses, or an effect's per seed and image
    differences, paired), its t-interval with the crossed standard error, and the t-test's p."""
    x = np.asarray(errors, np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        return NO_ESTIMATE
    mean = float(x.mean())
    if x.shape[0] < 2:
        return Estimate(mean, math.nan, math.nan, x.shape[0])
    var, df = crossed_variance(x)
    se = math.sqrt(var)
    half = float(scipy_stats.t.ppf(1 - ALPHA / 2, df)) * se
    p = (float(2 * scipy_stats.t.sf(abs(mean) / se, df)) if se > 0
         else 1.0 if mean == 0 else 0.0)
    return Estimate(mean, mean - half, mean + half, x.shape[0], p, se, df=df)


def median_ci(times, confidence: float = CONFIDENCE) -> Estimate:
    """Median of epochs to a threshold with runs that never reached it as +inf (all censored at
    the same run length, where Kaplan-Meier's median is this one), and the distribution-free
    interval between order statistics (binomial, >= `confidence`); inf: not reached by half."""
    x = np.sort(np.asarray([float(t) for t in times], np.float64))
    n = len(x)
    if n == 0:
        return NO_ESTIMATE
    k = int(scipy_stats.binom.ppf((1 - confidence) / 2, n, 0.5))
    lo = float(x[k - 1]) if k >= 1 else 0.0
    hi = float(x[n - k]) if k >= 1 else math.inf
    return Estimate(float(np.quantile(x, 0.5, method='inverted_cdf')), lo, hi, n)


def paired_ratio(baseline: dict, ablated: dict) -> Estimate:
    """Ablated / baseline epochs to a threshold, paired by seed ({seed: epochs}, inf for a run
    that never reached it; a reached run beat one that did not: ratio inf or 0; both never: a
    tie, 1). One statistic: the median of the per-seed ratios, its order-statistic interval
    (the ratios the sign test does not reject at 5%), p from the sign test (ties dropped) and
    se, the standard deviation of the finite log ratios (sign_test_mde's noise)."""
    seeds = sorted(set(baseline) & set(ablated))
    if not seeds:
        return NO_ESTIMATE
    b = np.asarray([float(baseline[s]) for s in seeds])
    a = np.asarray([float(ablated[s]) for s in seeds])
    if np.all(np.isinf(a) & np.isinf(b)):  # Nothing to compare: no test, no interval.
        return Estimate(1.0, math.nan, math.nan, len(seeds), kind='sign')
    with np.errstate(invalid='ignore', divide='ignore'):
        ratios = np.where(np.isinf(a) & np.isinf(b), 1.0, a / b)
    ci = median_ci(ratios)
    slower, faster = int(np.sum(a > b)), int(np.sum(a < b))
    p = (float(scipy_stats.binomtest(slower, slower + faster).pvalue) if slower + faster
         else 1.0)
    logs = np.log(ratios[np.isfinite(ratios) & (ratios > 0)])
    se = float(logs.std(ddof=1)) if len(logs) > 1 else math.nan
    return Estimate(ci.value, ci.lo, ci.hi, len(seeds), p, se, kind='sign')


def sign_test_mde(n: int, sigma: float, level: float, power: float = POWER) -> float:
    """The ratio (> 1) the two-sided sign test of n pairs detects with `power` at `level`,
    when the log ratios are normal with standard deviation `sigma` around the log of the true
    ratio (a pair is slower with probability Phi(log ratio / sigma)); exact binomial power. inf:
    no outcome of n pairs reaches `level`; nan: no noise estimate."""
    counts = np.arange(n + 1)
    p_two = np.minimum(1.0, 2 * np.minimum(scipy_stats.binom.sf(counts - 1, n, 0.5),
                                           scipy_stats.binom.cdf(counts, n, 0.5)))
    reject = counts[(p_two < level) & (counts > n / 2)]
    if n == 0 or len(reject) == 0:
        return math.inf
    if not math.isfinite(sigma):
        return math.nan
    c = int(reject.min())
    power_at = lambda q: float(scipy_stats.binom.sf(c - 1, n, q) + scipy_stats.binom.cdf(n - c, n, q))
    if sigma == 0:
        return 1.0
    q = optimize.brentq(lambda q: power_at(q) - power, 0.5, 1 - 1e-12)
    return math.exp(sigma * float(scipy_stats.norm.ppf(q)))


def mde(e: Estimate, tests: int) -> float:
    """The smallest effect `e`'s own test detects with POWER at Holm's strictest level,
    ALPHA / tests (its first step): a ratio for a sign test, else in the estimate's units."""
    level = ALPHA / max(tests, 1)
    if e.kind == 'sign':
        return sign_test_mde(e.n, e.se, level)
    if not math.isfinite(e.se):
        return math.nan
    return float(scipy_stats.norm.ppf(1 - level / 2) + scipy_stats.norm.ppf(POWER)) * e.se


def holm(pvalues) -> list:
    """Holm's step-down adjusted p-values (family-wise error at most alpha over all of them)."""
    p = np.asarray(pvalues, np.float64)
    order = np.argsort(p, kind='stable')
    m, adjusted, running = len(p), np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def decide(e: Estimate, p_holm: float, null: float, better: str, worse: str) -> str:
    """A verdict at the Holm-adjusted level: `worse`/`better` when p_holm < alpha, by the
    side of `null` the estimate is on, else 'not resolved'."""
    if e.n < MIN_SEEDS:
        return f'not resolved: n={e.n} < {MIN_SEEDS} seeds'
    if p_holm < ALPHA and e.value != null:
        return worse if e.value > null else better
    return 'not resolved'
