"""Is configuration A's test AUC really above B's, equal to it, or can the sweep not tell?

The unit of replication is the training seed: a configuration's AUC is the mean over its seeds,
and the uncertainty of a difference comes from the seed-to-seed spread of each side, with a
Student t quantile, not a normal one (with 3 seeds per side the normal z = 1.96 understates an
interval by up to ~2x). Two groups with their own spreads: Welch's interval

    delta = mean(A) - mean(B),  se^2 = s_A^2 / n_A + s_B^2 / n_B + row_std^2,
    df = Welch-Satterthwaite (n_A - 1 and n_B - 1 for the seed terms; the row term counts as known),
    interval = delta +- t(df, 1 - alpha/2) * se,

where ``row_std`` is the test-row noise of the difference that the seeds do not show (every run
scores the same test rows): the paired bootstrap below estimates it (Poisson(1) row weights,
every configuration scored on the same resamples, one weighted AUC per run in O(n)). It is small
next to the seed term on the committed sweeps (~0.001 vs 0.006-0.02) and 0 when no predictions
were saved.

Verdicts: **better** / **worse** when the (1 - alpha) interval excludes 0; **equivalent** only
through an equivalence test (TOST, two one-sided t tests at alpha): the (1 - 2 alpha) interval
lies inside +-margin (default 0.003 AUC, ``report.equivalence_margin``); **inconclusive**
otherwise, and always when a side has fewer than 2 seeds (no seed spread to measure). "Not
significantly different" is never read as "the same".
"""

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from data_prep.metrics import WeightedAUC

DEFAULT_LEVEL = 0.95
DEFAULT_MARGIN = 0.003  # AUC: differences inside +-margin count as "the same" (when TOST shows it)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (no scipy in the venv)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (any real df; inf: normal)."""
    if math.isinf(df):
        return NormalDist().cdf(t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The p quantile of Student's t (bisection on t_cdf, to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if math.isinf(df):
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def welch_se_df(a: Sequence[float], b: Sequence[float], row_std: float = 0.0) -> Tuple[float, float]:
    """Standard error of mean(a) - mean(b) and its Welch-Satterthwaite degrees of freedom; a
    known extra variance ``row_std**2`` adds to the error with infinite df. Needs 2+ values a side."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch needs at least 2 seeds per side, got {len(a)} and {len(b)}")
    va = float(np.var(a, ddof=1)) / len(a)
    vb = float(np.var(b, ddof=1)) / len(b)
    total = va + vb + row_std**2
    denom = va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)
    return math.sqrt(total), (total**2 / denom if denom > 0 else math.inf)


def _none_if_nan(x: float) -> Optional[float]:
    return None if isinstance(x, float) and math.isnan(x) else x


@dataclass
class SeedDifference:
    """mean-over-seeds test AUC of A minus B, its Welch t interval, and a TOST equivalence test."""

    delta: float
    low: float  # (level) interval: better / worse
    high: float
    df: float
    se: float
    level: float
    margin: float
    tost_low: float  # (1 - 2 alpha) interval: equivalent when inside +-margin
    tost_high: float
    tost_p: float  # the larger of the two one-sided p-values
    seeds_a: int
    seeds_b: int
    seed_se: float = 0.0  # the seed part of se
    row_std: float = 0.0  # the test-row part of se (paired bootstrap; 0 without predictions)
    resamples: int = 0

    @property
    def equivalent(self) -> bool:
        return self.tost_p < 1.0 - self.level

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "equivalent" if self.equivalent else "inconclusive"

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "delta": self.delta,
            "low": self.low,
            "high": self.high,
            "df": self.df,
            "se": self.se,
            "level": self.level,
            "margin": self.margin,
            "tost_low": self.tost_low,
            "tost_high": self.tost_high,
            "tost_p": self.tost_p,
            "equivalent": self.equivalent,
            "seeds_a": self.seeds_a,
            "seeds_b": self.seeds_b,
            "seed_se": self.seed_se,
            "row_std": self.row_std,
            "resamples": self.resamples,
            "verdict": self.verdict,
        }
        return {k: (_none_if_nan(v) if isinstance(v, float) else v) for k, v in out.items()}


def compare_seeds(
    a: Sequence[float],
    b: Sequence[float],
    level: float = DEFAULT_LEVEL,
    margin: float = DEFAULT_MARGIN,
    row_std: float = 0.0,
    resamples: int = 0,
) -> SeedDifference:
    """A vs B from their per-seed AUCs (seeds are the replicates). Fewer than 2 seeds on a side:
    no interval (nan) and the verdict is inconclusive."""
    if not 0.5 < level < 1.0:
        raise ValueError(f"level must be in (0.5, 1), got {level}")
    if not margin > 0:
        raise ValueError(f"the equivalence margin must be > 0, got {margin}")
    delta = float(np.mean(a)) - float(np.mean(b))
    if len(a) < 2 or len(b) < 2:
        nan = float("nan")
        return SeedDifference(
            delta, nan, nan, nan, nan, level, margin, nan, nan, 1.0, len(a), len(b), nan, row_std, resamples
        )
    se, df = welch_se_df(a, b, row_std)
    seed_se = math.sqrt(max(se**2 - row_std**2, 0.0))
    alpha = 1.0 - level
    if se == 0.0:  # identical runs: the difference is exact
        inside = abs(delta) < margin
        return SeedDifference(
            delta,
            delta,
            delta,
            df,
            se,
            level,
            margin,
            delta,
            delta,
            0.0 if inside else 1.0,
            len(a),
            len(b),
            seed_se,
            row_std,
            resamples,
        )
    half = t_ppf(1.0 - alpha / 2.0, df) * se
    tost_half = t_ppf(1.0 - alpha, df) * se
    p_above_lower = 1.0 - t_cdf((delta + margin) / se, df)  # H0: delta <= -margin
    p_below_upper = t_cdf((delta - margin) / se, df)  # H0: delta >= +margin
    return SeedDifference(
        delta,
        delta - half,
        delta + half,
        df,
        se,
        level,
        margin,
        delta - tost_half,
        delta + tost_half,
        max(p_above_lower, p_below_upper),
        len(a),
        len(b),
        seed_se,
        row_std,
        resamples,
    )


def _check_same_rows(label_sets: Sequence[np.ndarray]) -> None:
    first = label_sets[0]
    for other in label_sets[1:]:
        if other.shape != first.shape or not np.array_equal(other, first):
            raise ValueError("runs compared pairwise must have scored the same test rows (labels differ)")


@dataclass
class BootstrapAUCs:
    """Per configuration: mean-over-seeds test AUC on all rows and on each shared resample, and
    each seed's own AUC on all rows."""

    point: Dict[Hashable, float]
    draws: Dict[Hashable, np.ndarray]
    per_seed: Dict[Hashable, List[float]]
    level: float

    def row_std(self, a: Hashable, b: Hashable) -> float:
        """Bootstrap std over test-row resamples of the mean-over-seeds difference A - B."""
        return float(np.std(self.draws[a] - self.draws[b], ddof=1)) if len(self.draws[a]) > 1 else 0.0

    def difference(self, a: Hashable, b: Hashable, margin: float = DEFAULT_MARGIN) -> SeedDifference:
        """Seeds as replicates (Welch t), the paired row noise added to the error."""
        return compare_seeds(
            self.per_seed[a],
            self.per_seed[b],
            self.level,
            margin,
            row_std=self.row_std(a, b),
            resamples=len(self.draws[a]),
        )


def bootstrap_aucs(
    configs: Mapping[Hashable, Sequence[Dict[str, np.ndarray]]],
    resamples: int = 500,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> BootstrapAUCs:
    """``configs``: configuration -> its runs' saved test predictions (``prob``, ``label``), one per
    seed. Every configuration is scored on the same Poisson resamples of the rows (paired)."""
    if not configs or any(not runs for runs in configs.values()):
        raise ValueError("every configuration needs at least one run with saved predictions")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    _check_same_rows([r["label"] for runs in configs.values() for r in runs])
    labels = next(iter(configs.values()))[0]["label"]
    scorers = {key: [WeightedAUC(r["prob"], labels) for r in runs] for key, runs in configs.items()}

    def mean_auc(key: Hashable, weights: np.ndarray) -> float:
        return float(np.mean([f(weights) for f in scorers[key]]))

    ones = np.ones(len(labels))
    per_seed = {key: [f(ones) for f in fs] for key, fs in scorers.items()}
    point = {key: float(np.mean(v)) for key, v in per_seed.items()}
    rng = np.random.default_rng(seed)
    draws = {key: np.empty(resamples) for key in scorers}
    for i in range(resamples):
        weights = rng.poisson(1.0, len(labels)).astype(np.float64)
        for key in scorers:
            draws[key][i] = mean_auc(key, weights)
    return BootstrapAUCs(point, draws, per_seed, level)
