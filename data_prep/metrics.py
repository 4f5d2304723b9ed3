"""Binary-classification metrics, one implementation for the whole project: AUC (weighted,
unweighted, and expected under soft labels), logloss, accuracy, normalized entropy, calibration.

Training's evaluation, the planted generator's Bayes AUCs, the sweep's paired bootstrap and its
rare-item buckets all score through here, so two numbers that should agree cannot drift apart by
being computed twice. numpy only: it lives in data_prep, the bottom of the import order
(mlet_dist imports data_prep, never the reverse), because data_prep must not import torch.

AUC is the Mann-Whitney statistic over tie groups of the score (a tie counts one half), the
same value as torchmetrics' BinaryAUROC (tests/test_metrics.py checks it). With integer weights
every sum is exact in float64 (below 2**53), so the weighted form equals repeating each row by
its weight, and the unweighted AUC is the exact U / (P N), bit for bit the rank-sum formula the
planted generator used before.

Scores and probabilities must be finite: a NaN or inf is refused with a ValueError that counts
them (a NaN would rank above every score and pass as a number in every metric).
"""

import math
from typing import Dict, Optional, Tuple

import numpy as np

LOG_FLOOR = -100.0  # logloss caps each log at -100, as torch's binary_cross_entropy does


def finite_scores(values: np.ndarray, name: str = "scores") -> np.ndarray:
    """``values`` as float64, flat; ValueError naming how many are nan or inf. A NaN sorts above
    every number, so an AUC over it would silently rank a broken prediction first."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ValueError(
            f"{bad} of {len(values)} {name} are not finite (nan or inf): the model's "
            "predictions are broken; no metric is computed from them"
        )
    return values


def _tie_starts(sorted_scores: np.ndarray) -> np.ndarray:
    """Index of the first row of each group of equal scores in an ascending array."""
    return np.concatenate([[0], np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1])


def _grouped_pairs(starts: np.ndarray, pos_w: np.ndarray, neg_w: np.ndarray) -> Tuple[float, float, float]:
    """(sum over positive-negative pairs of [pos above neg] + 1/2 [tie], total positive weight,
    total negative weight) for rows sorted by ascending score, weights given per row."""
    pos_g = np.add.reduceat(pos_w, starts)
    neg_g = np.add.reduceat(neg_w, starts)
    neg_below = np.concatenate([[0.0], np.cumsum(neg_g)[:-1]])  # negatives strictly below each group
    return float((pos_g * (neg_below + 0.5 * neg_g)).sum()), float(pos_w.sum()), float(neg_w.sum())


class WeightedAUC:
    """AUC of fixed scores under any row weights: the sort is done once, each call is O(n)
    (the paired bootstrap scores every run on hundreds of weight vectors)."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        scores = finite_scores(scores)
        labels = np.asarray(labels).reshape(-1)
        if scores.shape != labels.shape:
            raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
        self.order = np.argsort(scores, kind="stable")
        self.starts = _tie_starts(scores[self.order])
        self.positive = labels[self.order] > 0

    def __call__(self, weights: Optional[np.ndarray] = None) -> float:
        """The AUC with row ``weights`` (None: all 1); nan when either class has no weight."""
        if len(self.order) == 0:
            return float("nan")
        if weights is None:
            w = np.ones(len(self.order))
        else:
            w = np.asarray(weights, dtype=np.float64).reshape(-1)
            if w.shape != self.order.shape:
                raise ValueError(f"weights {w.shape} and scores {self.order.shape} differ in length")
            w = w[self.order]
        pos_w, neg_w = np.where(self.positive, w, 0.0), np.where(self.positive, 0.0, w)
        pairs, total_pos, total_neg = _grouped_pairs(self.starts, pos_w, neg_w)
        if total_pos == 0 or total_neg == 0:
            return float("nan")
        return pairs / (total_pos * total_neg)


def binary_auc(scores: np.ndarray, labels: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """ROC AUC (Mann-Whitney, ties count one half), optionally row-weighted; nan when one class
    is absent. Labels > 0 are positives."""
    return WeightedAUC(scores, labels)(weights)


def expected_auc(scores: np.ndarray, probs: np.ndarray) -> float:
    """AUC expected when each row's label is Bernoulli(probs) independently (soft labels):
    sum over pairs i != j of p_i (1 - p_j) [s_i > s_j] (ties 1/2), over sum of p_i (1 - p_j)."""
    scores = finite_scores(scores)
    p = np.asarray(probs, np.float64).reshape(-1)
    if len(p) == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ps, ns = p[order], 1.0 - p[order]
    pairs, total_pos, total_neg = _grouped_pairs(_tie_starts(scores[order]), ps, ns)
    self_pairs = float((ps * ns).sum())  # a row is not paired with itself
    num = pairs - 0.5 * self_pairs
    den = total_pos * total_neg - self_pairs
    return num / den if den > 0 else float("nan")


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy, each log floored at -100 (torch's binary_cross_entropy: a
    probability of exactly 0 or 1 on the wrong label costs 100, not inf); nan for no rows."""
    p = finite_scores(probs, "probabilities")
    y = np.asarray(labels, np.float64).reshape(-1)
    if len(p) == 0:
        return float("nan")
    with np.errstate(divide="ignore"):
        per_row = y * np.maximum(np.log(p), LOG_FLOOR) + (1 - y) * np.maximum(np.log1p(-p), LOG_FLOOR)
    return float(-per_row.mean())


def accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Share of rows whose prediction (prob > threshold) is the label; nan for no rows."""
    p = finite_scores(probs, "probabilities")
    if len(p) == 0:
        return float("nan")
    return float(np.mean((p > threshold) == (np.asarray(labels).reshape(-1) > 0)))


def normalized_entropy(logloss: float, ctr: float) -> float:
    """Normalized entropy (He et al., 2014): logloss over the entropy of always predicting the
    base rate ``ctr``; < 1 means better than the base rate. nan when the split has one class."""
    base = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr)) if 0 < ctr < 1 else float("nan")
    return logloss / base if base > 0 else float("nan")


def calibration(probs: np.ndarray, labels: np.ndarray) -> float:
    """Predicted over observed clicks (1 = calibrated on average); nan without positives."""
    ctr = float(np.asarray(labels, np.float64).mean())
    return float(finite_scores(probs, "probabilities").mean()) / ctr if ctr > 0 else float("nan")


def binary_metrics(probs: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """What training reports per split: auc, logloss, ne, calibration, accuracy, rows."""
    probs = finite_scores(probs, "probabilities")  # checked once, before any metric
    labels = np.asarray(labels).reshape(-1)
    if len(labels) == 0:
        raise ValueError("no rows to evaluate")
    logloss = log_loss(probs, labels)
    return {
        "auc": binary_auc(probs, labels),
        "logloss": logloss,
        "ne": normalized_entropy(logloss, float(labels.astype(np.float64).mean())),
        "calibration": calibration(probs, labels),
        "accuracy": accuracy(probs, labels),
        "rows": int(len(labels)),
    }
