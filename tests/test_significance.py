"""The paired bootstrap behind the sweep headline: weighted AUC and paired intervals."""

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from mlet_dist.sweep.significance import WeightedAUC, bootstrap_aucs


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels).long()))


def test_weighted_auc_matches_torchmetrics_with_unit_weights_and_ties() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.3).astype(np.int8)
    scores = np.round(rng.random(2000) + 0.4 * labels, 2)  # rounding makes many ties
    assert WeightedAUC(scores, labels)(np.ones(2000)) == pytest.approx(_auc(scores, labels), abs=1e-6)


def test_integer_weights_equal_repeated_rows() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(500) < 0.4).astype(np.int8)
    scores = np.round(rng.normal(size=500) + labels, 1)
    weights = rng.poisson(1.0, 500)
    repeated = np.repeat(np.arange(500), weights)
    expected = _auc(scores[repeated], labels[repeated])
    assert WeightedAUC(scores, labels)(weights.astype(float)) == pytest.approx(expected, abs=1e-6)


def test_one_class_gives_nan() -> None:
    assert np.isnan(WeightedAUC(np.array([0.1, 0.2]), np.array([1, 1]))(np.ones(2)))


def _preds(prob: np.ndarray, labels: np.ndarray) -> dict:
    return {"prob": prob.astype(np.float32), "label": labels}


def test_paired_interval_separates_a_better_model_and_not_a_copy() -> None:
    rng = np.random.default_rng(2)
    labels = (rng.random(20000) < 0.25).astype(np.int8)
    signal = labels + rng.normal(size=20000)
    good = [_preds(signal + 0.5 * rng.normal(size=20000), labels) for _ in range(2)]
    worse = [_preds(signal + 1.5 * rng.normal(size=20000), labels) for _ in range(2)]
    boot = bootstrap_aucs({"good": good, "worse": worse, "copy": good}, resamples=200)
    diff = boot.difference("good", "worse")
    assert diff.verdict == "better" and diff.low > 0 and diff.low <= diff.delta <= diff.high
    assert boot.difference("worse", "good").verdict == "worse"
    same = boot.difference("good", "copy")  # paired rows cancel; the two seeds' spread remains
    assert same.delta == 0.0 and same.row_std == 0.0 and same.seed_se > 0 and same.verdict == "tie"
    seeds = [_auc(r["prob"], labels) for r in good]
    assert same.seed_se == pytest.approx(np.sqrt(2 * np.var(seeds, ddof=1) / 2), rel=1e-3)
    expected = np.mean([_auc(r["prob"], labels) for r in good])
    assert boot.point["good"] == pytest.approx(expected, abs=1e-6)


def test_runs_on_different_rows_are_refused() -> None:
    a = _preds(np.array([0.1, 0.9, 0.5]), np.array([0, 1, 1], np.int8))
    b = _preds(np.array([0.1, 0.9, 0.5]), np.array([0, 1, 0], np.int8))
    with pytest.raises(ValueError, match="same test rows"):
        bootstrap_aucs({"a": [a], "b": [b]}, resamples=5)
    with pytest.raises(ValueError, match="at least one run"):
        bootstrap_aucs({"a": [a], "b": []}, resamples=5)


def _record(tmp_path, model: str, d: int, k, seed: int, prob: np.ndarray, labels: np.ndarray, val_auc: float):
    from mlet_dist.sweep.config import RunSpec
    from mlet_dist.sweep.report import RunRecord
    from mlet_dist.training.diagnostics import save_predictions
    from mlet_dist.training.evaluation import Predictions

    run = RunSpec("dlrm", model, d, k, seed)
    run_dir = tmp_path / run.run_id
    preds = Predictions(torch.from_numpy(prob.astype(np.float32)), torch.from_numpy(labels).float())
    save_predictions(run_dir / "predictions", {"test": preds})
    return RunRecord(run, run_dir, {"trained": {"val": {"auc": val_auc}}}, None)


def test_headline_picks_k_by_validation_and_matches_only_contiguously(tmp_path) -> None:
    """MLET is clearly worse than the d'=4 baseline but better than an overfit d'=8 one: it must
    not be said to match up to d'=8. k is chosen by validation AUC even where test disagrees."""
    from mlet_dist.sweep.headline import headline_rows

    rng = np.random.default_rng(3)
    labels = (rng.random(20000) < 0.3).astype(np.int8)
    signal = labels + rng.normal(size=20000)

    def noisy(scale: float) -> np.ndarray:
        return signal + scale * rng.normal(size=20000)

    records = [
        _record(tmp_path, "baseline", 4, None, 0, noisy(0.2), labels, val_auc=0.80),
        _record(tmp_path, "baseline", 8, None, 0, noisy(3.0), labels, val_auc=0.60),
        _record(tmp_path, "mlet", 4, 32, 0, noisy(1.0), labels, val_auc=0.75),  # chosen by val
        _record(tmp_path, "mlet", 4, 64, 0, noisy(0.1), labels, val_auc=0.70),  # best on test, not chosen
    ]
    (row,) = headline_rows(records, resamples=100)
    assert row["k"] == 32 and row["k_chosen_by"] == "val auc"
    assert row["versus"][4]["verdict"] == "worse" and row["versus"][8]["verdict"] == "better"
    assert row["matches_up_to_baseline_d"] is None and row["beats_baseline_d"] == [8]
    assert row["best_baseline_d"] == 4 and row["vs_best_baseline"]["verdict"] == "worse"
