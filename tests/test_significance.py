"""The statistics behind the sweep headline: weighted AUC and the paired bootstrap (test-row
noise), Student t / Welch intervals with seeds as replicates, and the TOST equivalence test.

scipy is not in the venv, so the t distribution is checked against closed forms (df = 1, 2, 4),
published table quantiles, and R's ``t.test(extra ~ group, data = sleep)`` Welch output."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from data_prep.metrics import WeightedAUC
from mlet_dist.sweep.significance import bootstrap_aucs, compare_seeds, t_cdf, t_ppf, welch_se_df

# R: t.test(extra ~ group, data = sleep) (Welch): t = -1.8608, df = 17.776, p-value = 0.07939,
# 95 percent confidence interval: -3.3654832  0.2054832
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def _t4_cdf(t: float) -> float:
    """Student t CDF with 4 degrees of freedom in closed form."""
    u = t / math.sqrt(4.0 + t * t)
    return 0.5 + 0.75 * u - 0.25 * u**3


@pytest.mark.parametrize("t", [-6.0, -1.3, -0.2, 0.0, 0.4, 2.0, 9.0])
def test_t_cdf_matches_closed_forms(t: float) -> None:
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert t_cdf(t, 4) == pytest.approx(_t4_cdf(t), abs=1e-12)
    assert t_cdf(t, math.inf) == pytest.approx(0.5 * (1 + math.erf(t / math.sqrt(2))), abs=1e-12)


def test_t_quantiles_match_published_tables() -> None:
    table = {
        (0.975, 2): 4.302653,
        (0.975, 3): 3.182446,
        (0.975, 4): 2.776445,
        (0.975, 10): 2.228139,
        (0.975, 30): 2.042272,
        (0.95, 2): 2.919986,
        (0.95, 4): 2.131847,
        (0.995, 5): 4.032143,
    }
    for (p, df), q in table.items():
        assert t_ppf(p, df) == pytest.approx(q, abs=2e-6), (p, df)
        assert t_ppf(1 - p, df) == pytest.approx(-q, abs=2e-6)
    # Welch gives non-integer df: the quantile lies between its integer neighbours, and inverts the CDF
    assert t_ppf(0.975, 4) < t_ppf(0.975, 3.5) < t_ppf(0.975, 3)
    assert t_cdf(t_ppf(0.975, 2.37), 2.37) == pytest.approx(0.975, abs=1e-10)
    assert t_ppf(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)
    # with 3 seeds a side (df ~ 4) the normal quantile is ~30% too small; with df ~ 2, ~55%
    assert t_ppf(0.975, 4) / 1.959964 > 1.4 and t_ppf(0.975, 2) / 1.959964 > 2.1


def test_welch_interval_matches_r_on_the_sleep_data() -> None:
    """A planted z = 1.96 or a pooled df = 18 would fail here."""
    diff = compare_seeds(SLEEP_1, SLEEP_2, level=0.95, margin=1.0)
    assert diff.df == pytest.approx(17.776, abs=5e-4)
    assert diff.delta / diff.se == pytest.approx(-1.8608, abs=5e-5)
    assert 2 * t_cdf(diff.delta / diff.se, diff.df) == pytest.approx(0.07939, abs=5e-6)
    assert (diff.low, diff.high) == (pytest.approx(-3.3654832, abs=1e-6), pytest.approx(0.2054832, abs=1e-6))
    assert diff.verdict == "inconclusive"  # p = 0.08 and the interval is far wider than +-1


def test_welch_df_by_hand_and_the_row_term() -> None:
    """Equal spreads and sizes: df = 2 (n - 1) exactly; a known row variance adds to se and
    raises df (it has no seed error of its own)."""
    a, b = [0.70, 0.71, 0.72], [0.67, 0.68, 0.69]
    se, df = welch_se_df(a, b)
    assert se == pytest.approx(math.sqrt(2 * 0.0001 / 3), rel=1e-12) and df == pytest.approx(4.0, rel=1e-12)
    se_r, df_r = welch_se_df(a, b, row_std=0.004)
    assert se_r == pytest.approx(math.sqrt(2 * 0.0001 / 3 + 0.004**2), rel=1e-12)
    assert df_r == pytest.approx(se_r**4 / (2 * (0.0001 / 3) ** 2 / 2), rel=1e-12) and df_r > 4
    diff = compare_seeds(a, b)
    half = 2.776445 * se  # t(0.975, 4) = 0.0227: a 0.03 gap is shown, a 0.02 one would not be
    assert (diff.low, diff.high) == (pytest.approx(0.03 - half, abs=1e-6), pytest.approx(0.03 + half, abs=1e-6))
    assert diff.verdict == "better"
    assert compare_seeds(a, [x + 0.01 for x in b]).verdict == "inconclusive"


def test_tost_says_equivalent_only_when_the_90_interval_is_inside_the_margin() -> None:
    """Hand-computed with df = 4: TOST half-width t(0.95, 4) * se = 2.131847 * se."""
    a = [0.7000, 0.7010, 0.7020]  # sd 0.001, se of the difference sqrt(2/3) * 0.001 = 0.000816
    se = math.sqrt(2 / 3) * 0.001
    close = compare_seeds(a, [x + 0.0005 for x in a], margin=0.003)
    assert close.tost_high == pytest.approx(-0.0005 + 2.131847 * se, abs=1e-8)
    assert close.tost_high < 0.003 and close.tost_low > -0.003 and close.equivalent
    assert close.verdict == "equivalent"
    # one-sided p-values by hand from the closed-form df=4 CDF
    p_lower = 1 - _t4_cdf((-0.0005 + 0.003) / se)
    p_upper = _t4_cdf((-0.0005 - 0.003) / se)
    assert close.tost_p == pytest.approx(max(p_lower, p_upper), abs=1e-10)
    # same means, 10x the seed spread: the interval straddles the margin -> inconclusive, not "the same"
    wide = compare_seeds([0.69, 0.70, 0.71], [0.6905, 0.7005, 0.7105], margin=0.003)
    assert abs(wide.delta) < 0.001 and wide.low < 0 < wide.high
    assert not wide.equivalent and wide.verdict == "inconclusive"
    # a tighter margin than the interval allows is never met; a looser one is
    assert not compare_seeds(a, [x + 0.0005 for x in a], margin=0.002).equivalent
    assert compare_seeds([0.69, 0.70, 0.71], [0.6905, 0.7005, 0.7105], margin=0.05).equivalent


def test_fewer_than_two_seeds_give_no_interval_and_no_verdict() -> None:
    diff = compare_seeds([0.80], [0.60, 0.61, 0.62])
    assert math.isnan(diff.low) and diff.verdict == "inconclusive" and not diff.equivalent
    out = diff.to_json()
    assert out["low"] is None and out["high"] is None and out["delta"] == pytest.approx(0.19)
    json.dumps(out, allow_nan=False)  # strict JSON


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
    assert diff.row_std > 0 and diff.resamples == 200 and diff.df > 2  # 2 seeds a side: df >= 1
    assert boot.difference("worse", "good").verdict == "worse"
    same = boot.difference("good", "copy")  # paired rows cancel; the two seeds' spread remains
    assert same.delta == 0.0 and same.row_std == 0.0 and same.seed_se > 0
    seeds = [_auc(r["prob"], labels) for r in good]
    assert same.seed_se == pytest.approx(np.sqrt(2 * np.var(seeds, ddof=1) / 2), rel=1e-3)
    # equivalence needs the 90% interval inside the margin: decided by the margin, not by "no difference"
    assert boot.difference("good", "copy", margin=1e-6).verdict == "inconclusive"
    assert boot.difference("good", "copy", margin=0.2).verdict == "equivalent"
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
    not be said to match up to d'=8. k is chosen by validation AUC even where test disagrees.
    3 seeds per configuration (fresh noise each), so every side has a seed spread."""
    from mlet_dist.sweep.headline import headline_rows

    rng = np.random.default_rng(3)
    labels = (rng.random(20000) < 0.3).astype(np.int8)
    signal = labels + rng.normal(size=20000)

    def noisy(scale: float) -> np.ndarray:
        return signal + scale * rng.normal(size=20000)

    records = [
        _record(tmp_path, model, d, k, seed, noisy(scale), labels, val_auc=val)
        for model, d, k, scale, val in [
            ("baseline", 4, None, 0.2, 0.80),
            ("baseline", 8, None, 3.0, 0.60),
            ("mlet", 4, 32, 1.0, 0.75),  # chosen by val
            ("mlet", 4, 64, 0.1, 0.70),
        ]  # best on test, not chosen
        for seed in range(3)
    ]
    (row,) = headline_rows(records, resamples=100)
    assert row["k"] == 32 and row["k_chosen_by"] == "val auc" and row["seeds"] == 3
    assert row["versus"][4]["verdict"] == "worse" and row["versus"][8]["verdict"] == "better"
    assert row["matches_up_to_baseline_d"] is None and row["beats_baseline_d"] == [8]
    assert row["best_baseline_d"] == 4 and row["vs_best_baseline"]["verdict"] == "worse"


def _seed_groups(spread: float):
    """MLET d=4 with the same expected AUC as the baseline at d=4 and d=8; per-seed AUCs."""
    from mlet_dist.sweep.headline import SeedAUCs

    offsets = [-spread, 0.0, spread]
    return {
        ("dlrm", "baseline", 4, None): SeedAUCs([0.700 + o for o in offsets], [0.70] * 3),
        ("dlrm", "baseline", 8, None): SeedAUCs([0.7005 + o for o in offsets], [0.71] * 3),
        ("dlrm", "mlet", 4, 32): SeedAUCs([0.7003 + o for o in offsets], [0.70] * 3),
    }


def test_matches_only_through_equivalence() -> None:
    """The same expected AUC: 'matches' with a tight seed spread (TOST inside ±0.003); with a wide
    spread the old reading ('not significantly worse') would say matches, the new one is
    inconclusive and matches nothing."""
    from mlet_dist.sweep.headline import headline_markdown, headline_rows_from_seed_aucs

    (tight,) = headline_rows_from_seed_aucs(_seed_groups(0.0005))
    assert [tight["versus"][w]["verdict"] for w in (4, 8)] == ["equivalent", "equivalent"]
    assert tight["matches_up_to_baseline_d"] == 8 and tight["equivalent_to_baseline_d"] == [4, 8]
    (wide,) = headline_rows_from_seed_aucs(_seed_groups(0.01))
    assert all(v["low"] < 0 < v["high"] for v in wide["versus"].values())  # "not significantly worse"
    assert [wide["versus"][w]["verdict"] for w in (4, 8)] == ["inconclusive", "inconclusive"]
    assert wide["matches_up_to_baseline_d"] is None and wide["beats_baseline_d"] == []
    md = "\n".join(headline_markdown([tight]))
    assert "≈" in md and "±0.003" in md and "TOST" in md and "Welch" in md
    (looser,) = headline_rows_from_seed_aucs(_seed_groups(0.01), margin=0.05)  # the margin is a choice
    assert looser["matches_up_to_baseline_d"] == 8


def test_refresh_rewrites_only_the_headline_from_results_csv(tmp_path: Path) -> None:
    """A committed report without run dirs: the headline comes back from results.csv, with the
    row term of the previous report.json, and the rest of report.md is untouched."""
    import csv

    from mlet_dist.sweep.refresh import refresh

    groups = _seed_groups(0.0005)
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(
            f, fieldnames=["run_id", "arch", "model", "d", "k", "seed", "val_auc", "test_auc", "predictions"]
        )
        w.writeheader()
        for (arch, model, d, k), g in groups.items():
            for seed, (test, val) in enumerate(zip(g.test, g.val)):
                w.writerow(
                    {
                        "run_id": f"{model}{d}-{seed}",
                        "arch": arch,
                        "model": model,
                        "d": d,
                        "k": k or "",
                        "seed": seed,
                        "val_auc": val,
                        "test_auc": test,
                        "predictions": True,
                    }
                )
    old = {
        "headline": [
            {
                "arch": "dlrm",
                "d": 4,
                "k": 32,
                "versus": {"4": {"row_std": 0.0004, "resamples": 500}, "8": {"row_std": 0.002, "resamples": 500}},
            }
        ],
        "table": [1],
    }
    (tmp_path / "report.json").write_text(json.dumps(old))
    (tmp_path / "report.md").write_text(
        "# R\n\n## Table\n\nkeep me\n\n## Headline: MLET d vs baseline d'\n\n"
        "old verdicts ▲\n\n## Rare items\n\nkeep me too\n"
    )
    (row,) = refresh(tmp_path)
    assert row["versus"][4]["row_std"] == 0.0004 and row["versus"][8]["row_std"] == 0.002
    assert row["versus"][4]["verdict"] == "equivalent"
    assert row["versus"][8]["verdict"] == "inconclusive"  # the row noise of 0.002 widens it past ±0.003
    md = (tmp_path / "report.md").read_text()
    assert "old verdicts" not in md and md.count("keep me") == 2 and md.index("## Rare items") > md.index("≈")
    assert "Headline recomputed from `results.csv`" in md
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["table"] == [1] and report["headline_statistic"]["margin"] == 0.003
    lines = list(csv.DictReader(open(tmp_path / "headline.csv")))
    assert [(l["baseline_d"], l["diff_verdict"]) for l in lines] == [("4", "equivalent"), ("8", "inconclusive")]
