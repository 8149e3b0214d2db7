"""Seed statistics for ablation grids: means with 95% t-intervals, paired effects and verdicts.

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
    return geometric_ci(list(log_ratios(baseline, ablated).values()), confidence)


def log_ratios(baseline: dict, ablated: dict) -> dict:
    """{seed: log(ablated / baseline)} over the seeds with two positive values."""
    return {s: math.log(float(ablated[s]) / float(baseline[s]))
            for s in paired_differences(baseline, ablated)
            if float(ablated[s]) > 0 and float(baseline[s]) > 0}


def geometric_ci(log_ratios, confidence: float = CONFIDENCE) -> Interval:
    """exp of the t-interval of log ratios: a geometric-mean ratio and its CI."""
    ci = mean_ci(log_ratios, confidence)
    if ci.n == 0:
        return NONE
    return Interval(math.exp(ci.mean), math.exp(ci.lo), math.exp(ci.hi), ci.n)
