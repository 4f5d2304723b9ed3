"""Is configuration A's test AUC really above B's? Test rows and training seeds both vary.

Two sources of noise separate a measured difference from the true one: which rows the test set
holds, and which seed each run trained with. Rows: every run of a sweep scores the same test
rows, so two configurations are compared on the same bootstrap resamples (paired), which removes
the row noise they share; Poisson(1) row weights make every resample one weighted AUC per run,
computed in O(n) from an order sorted once. Seeds: each side's AUC is the mean over its seeds,
whose standard error (seed std / sqrt(n)) is added in quadrature:

    interval = delta ± z · sqrt(var_rows(delta) + se_seeds(A)² + se_seeds(B)²)

(normal approximation; z for the level). With 3 seeds the seed term is itself rough: read
verdicts near the edge with care. One seed per side gives the row-only interval.
"""

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Dict, Hashable, List, Mapping, Sequence

import numpy as np


class WeightedAUC:
    """AUC of fixed scores under varying row weights (ties count one half)."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels).reshape(-1)
        if scores.shape != labels.shape:
            raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
        self.order = np.argsort(scores, kind="stable")
        ranked = scores[self.order]
        self.group = np.concatenate([[0], np.cumsum(ranked[1:] != ranked[:-1])])  # tie groups, ascending
        self.num_groups = int(self.group[-1]) + 1 if len(ranked) else 0
        self.positive = labels[self.order] > 0

    def __call__(self, weights: np.ndarray) -> float:
        w = weights[self.order]
        pos = np.bincount(self.group, weights=np.where(self.positive, w, 0.0), minlength=self.num_groups)
        neg = np.bincount(self.group, weights=np.where(self.positive, 0.0, w), minlength=self.num_groups)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos == 0 or total_neg == 0:
            return float("nan")
        below = np.cumsum(neg) - neg  # negatives strictly below each tie group
        return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


@dataclass
class PairedDifference:
    """mean-over-seeds test AUC of A minus that of B, with an interval over test rows and seeds."""

    delta: float
    low: float
    high: float
    resamples: int
    level: float
    row_std: float = 0.0  # bootstrap std of delta over test-row resamples
    seed_se: float = 0.0  # standard error of delta from the seed-to-seed spread of both sides

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "tie"

    def to_json(self) -> Dict[str, float]:
        return {"delta": self.delta, "low": self.low, "high": self.high, "resamples": self.resamples,
                "level": self.level, "row_std": self.row_std, "seed_se": self.seed_se, "verdict": self.verdict}


def _check_same_rows(label_sets: Sequence[np.ndarray]) -> None:
    first = label_sets[0]
    for other in label_sets[1:]:
        if other.shape != first.shape or not np.array_equal(other, first):
            raise ValueError("runs compared pairwise must have scored the same test rows (labels differ)")


def _seed_variance_of_mean(values: Sequence[float]) -> float:
    return float(np.var(values, ddof=1)) / len(values) if len(values) > 1 else 0.0


@dataclass
class BootstrapAUCs:
    """Per configuration: mean-over-seeds test AUC on all rows and on each shared resample, and
    each seed's own AUC on all rows."""

    point: Dict[Hashable, float]
    draws: Dict[Hashable, np.ndarray]
    per_seed: Dict[Hashable, List[float]]
    level: float

    def difference(self, a: Hashable, b: Hashable) -> PairedDifference:
        row_std = float(np.std(self.draws[a] - self.draws[b], ddof=1)) if len(self.draws[a]) > 1 else 0.0
        seed_se = math.sqrt(_seed_variance_of_mean(self.per_seed[a]) + _seed_variance_of_mean(self.per_seed[b]))
        z = NormalDist().inv_cdf(0.5 + self.level / 2.0)
        half = z * math.sqrt(row_std ** 2 + seed_se ** 2)
        delta = self.point[a] - self.point[b]
        return PairedDifference(delta, delta - half, delta + half, len(self.draws[a]), self.level, row_std, seed_se)


def bootstrap_aucs(
    configs: Mapping[Hashable, Sequence[Dict[str, np.ndarray]]], resamples: int = 500, level: float = 0.95,
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
