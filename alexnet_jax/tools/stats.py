"""Statistics for ablation grids. tools/report.py uses the second half: the two-way bootstrap
of test errors over seeds and test images, medians and ratios of epochs to a threshold with
censored runs counted, Holm's correction and the minimum detectable effect. The first half (the
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

BOOTSTRAP_SAMPLES = 4000
ALPHA = 1 - CONFIDENCE
POWER = 0.8  # Of the minimum detectable effect.
# A percentile bootstrap never leaves the range of its seeds: with every seed on one side of 0 it
# gives p ~ 0 at any n. From 6 seeds on, that event alone has p <= 2/2^6 = 0.03 (as the sign
# test): fewer seeds give an estimate and an interval, not a verdict.
MIN_BOOTSTRAP_SEEDS = 6
CHUNK = 250  # Resamples drawn at once: a chunk's image weights for ImageNet's 50,000 are 100 MB.


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A statistic with its 95% bootstrap interval, two-sided p-value (of "no effect") and the
    bootstrap standard error (on the log scale for a ratio); n: seeds (or pairs) used."""
    value: float
    lo: float
    hi: float
    n: int
    p: float = math.nan
    se: float = math.nan
    seeds_only: bool = False  # A t-interval over seeds: no per-image results to resample.


NO_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0)


def two_way_bootstrap(errors, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> np.ndarray:
    """The bootstrap distribution of the mean of `errors` [seeds, images] with seeds and test
    images resampled together (each independently, with replacement): a seed's luck and the
    finite test set are both in its spread. A point's 0/1 errors, or an effect's per seed and
    image differences (ablated - baseline: the same images for both, so they are paired)."""
    x = np.asarray(errors, np.float64)
    rng = np.random.default_rng(seed)
    n_s, n_i = x.shape
    out = []
    for start in range(0, samples, CHUNK):
        b = min(CHUNK, samples - start)
        ws = rng.multinomial(n_s, np.full(n_s, 1 / n_s), size=b)
        wi = rng.multinomial(n_i, np.full(n_i, 1 / n_i), size=b)
        out.append(np.einsum('bs,bs->b', ws, wi @ x.T) / (n_s * n_i))
    return np.concatenate(out)


def bootstrap_estimate(errors, samples: int = BOOTSTRAP_SAMPLES) -> Estimate:
    """Mean of `errors` [seeds, images], its percentile interval and p-value (two_way_bootstrap;
    p: twice the share of resamples on the far side of 0, at least 2 / (samples + 1))."""
    x = np.asarray(errors, np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        return NO_ESTIMATE
    dist = two_way_bootstrap(x, samples)
    lo, hi = np.quantile(dist, [ALPHA / 2, 1 - ALPHA / 2])
    below, above = np.sum(dist <= 0) + 1, np.sum(dist >= 0) + 1
    p = float(min(1.0, 2 * min(below, above) / (len(dist) + 1)))
    return Estimate(float(x.mean()), float(lo), float(hi), x.shape[0], p, float(dist.std()))


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


def censored_ratio(baseline: dict, ablated: dict, samples: int = BOOTSTRAP_SAMPLES) -> Estimate:
    """Ablated / baseline median epochs to a threshold, paired by seed ({seed: epochs}, inf for
    a run that never reached it): the seeds bootstrapped (percentile interval); p from the
    paired sign test that counts censored runs (a run that reached the threshold beat one that
    did not; both not reached is a tie); se: of the log ratio, where the resamples are finite."""
    seeds = sorted(set(baseline) & set(ablated))
    if not seeds:
        return NO_ESTIMATE
    b = np.asarray([float(baseline[s]) for s in seeds])
    a = np.asarray([float(ablated[s]) for s in seeds])
    ratio = _median_ratio(b, a)
    if np.all(np.isinf(a) & np.isinf(b)):  # Nothing to compare: no test, no interval.
        return Estimate(ratio, math.nan, math.nan, len(seeds))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(seeds), size=(samples, len(seeds)))
    med = lambda v: np.quantile(v[idx], 0.5, axis=1, method='inverted_cdf')
    with np.errstate(invalid='ignore', divide='ignore'):
        dist = med(a) / med(b)
    dist = np.where(np.isnan(dist), 1.0, dist)  # inf / inf: neither reached it, no difference.
    lo, hi = np.quantile(dist, [ALPHA / 2, 1 - ALPHA / 2], method='inverted_cdf')
    finite = dist[np.isfinite(dist) & (dist > 0)]
    se = float(np.log(finite).std()) if len(finite) > (1 - ALPHA / 2) * samples else math.nan
    slower, faster = int(np.sum(a > b)), int(np.sum(a < b))
    p = (float(scipy_stats.binomtest(slower, slower + faster).pvalue) if slower + faster
         else 1.0)
    return Estimate(ratio, float(lo), float(hi), len(seeds), p, se)


def _median_ratio(b, a) -> float:
    mb, ma = (float(np.quantile(v, 0.5, method='inverted_cdf')) for v in (b, a))
    if math.isinf(mb) and math.isinf(ma):
        return 1.0
    return ma / mb if mb > 0 else math.inf


def holm(pvalues) -> list:
    """Holm's step-down adjusted p-values (family-wise error at most alpha over all of them)."""
    p = np.asarray(pvalues, np.float64)
    order = np.argsort(p)
    m, adjusted, running = len(p), np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def mde_z(m: int) -> float:
    """z_{1 - alpha / (2m)} + z_{POWER}: an effect of this many standard errors is detected with
    POWER at Holm's strictest level alpha / m (its first step) among m verdicts."""
    return float(scipy_stats.norm.ppf(1 - ALPHA / (2 * max(m, 1))) + scipy_stats.norm.ppf(POWER))


def decide(e: Estimate, p_holm: float, null: float, better: str, worse: str) -> str:
    """A verdict at the Holm-adjusted level: `worse`/`better` when p_holm < alpha, by the
    side of `null` the estimate is on, else 'not resolved'."""
    if e.n < MIN_SEEDS:
        return f'not resolved: n={e.n} < {MIN_SEEDS} seeds'
    if p_holm < ALPHA and e.value != null:
        return worse if e.value > null else better
    return 'not resolved'
