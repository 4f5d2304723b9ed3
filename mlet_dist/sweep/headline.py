"""The headline of a sweep: up to which baseline width d' does MLET at width d hold its own?

For each arch and each MLET d, k is chosen by mean validation AUC (never by test). That MLET
configuration is compared with the baseline at every d' on test AUC, seeds as the replicates
(Welch t interval, test-row noise from a paired bootstrap added; ``significance.py``):

* per comparison a verdict: **better** / **worse** (the 95% interval excludes 0), **equivalent**
  (TOST: the 90% interval lies inside ±margin, default 0.003 AUC) or **inconclusive**;
* ``matches_up_to``: the largest d' such that MLET is equivalent to or better than the baseline
  at d' *and at every smaller width* (an overfitting wide baseline cannot make a weak MLET
  "match" it, and an interval too wide to decide never counts as a match);
* ``beats``: the widths d' where MLET is significantly better;
* ``vs_best``: the comparison with the baseline width that has the best mean validation AUC.

The rows can be built from run directories (``headline_rows``, with saved test predictions) or,
for a committed report whose runs are gone, from its ``results.csv`` per-seed AUCs
(``headline_rows_from_seed_aucs``; ``sweep/refresh.py``).
"""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlet_dist.sweep.plotting import arch_key
from mlet_dist.sweep.significance import (
    DEFAULT_LEVEL,
    DEFAULT_MARGIN,
    BootstrapAUCs,
    SeedDifference,
    bootstrap_aucs,
    compare_seeds,
)
from mlet_dist.training.diagnostics import load_predictions

Group = Tuple[str, str, int, Optional[int]]  # arch, model, d, k
Compare = Callable[[Group, Group], SeedDifference]


@dataclass
class SeedAUCs:
    """One configuration's per-seed test AUCs and validation AUCs (the replicates)."""

    test: List[float] = field(default_factory=list)
    val: List[Optional[float]] = field(default_factory=list)

    @property
    def val_mean(self) -> Optional[float]:
        xs = [x for x in self.val if x is not None]
        return float(np.mean(xs)) if xs else None

    @property
    def test_mean(self) -> float:
        return float(np.mean(self.test))


def _by_val(groups: Dict[Group, SeedAUCs], g: Group) -> float:
    v = groups[g].val_mean
    return -1.0 if v is None else v


def headline_from_groups(groups: Dict[Group, SeedAUCs], compare: Compare) -> List[Dict[str, Any]]:
    """One row per (arch, MLET d): the val-chosen k and its comparison with each baseline d'."""
    rows: List[Dict[str, Any]] = []
    for arch in sorted({g[0] for g in groups}, key=arch_key):
        baselines = sorted(g for g in groups if g[0] == arch and g[1] == "baseline")
        mlet = [g for g in groups if g[0] == arch and g[1] == "mlet"]
        if not baselines or not mlet:
            continue
        chosen: Dict[int, Group] = {}
        for g in sorted(mlet, key=lambda g: (g[2], g[3] or 0)):  # k by validation AUC at each d
            best = chosen.get(g[2])
            if best is None or _by_val(groups, g) > _by_val(groups, best):
                chosen[g[2]] = g
        best_base = max(baselines, key=lambda b: _by_val(groups, b))
        for d in sorted(chosen):
            g = chosen[d]
            versus = {b[2]: compare(g, b) for b in baselines}
            matched = None
            for bd in sorted(versus):
                if not (versus[bd].verdict == "better" or versus[bd].equivalent):
                    break
                matched = bd
            rows.append(
                {
                    "arch": arch,
                    "d": d,
                    "k": g[3],
                    "k_chosen_by": "val auc",
                    "seeds": len(groups[g].test),
                    "test_auc": groups[g].test_mean,
                    "val_auc": groups[g].val_mean,
                    "versus": {bd: diff.to_json() for bd, diff in versus.items()},
                    "baseline_test_auc": {b[2]: groups[b].test_mean for b in baselines},
                    "baseline_seeds": {b[2]: len(groups[b].test) for b in baselines},
                    "matches_up_to_baseline_d": matched,
                    "beats_baseline_d": [bd for bd in sorted(versus) if versus[bd].verdict == "better"],
                    "equivalent_to_baseline_d": [bd for bd in sorted(versus) if versus[bd].equivalent],
                    "best_baseline_d": best_base[2],
                    "vs_best_baseline": versus[best_base[2]].to_json(),
                }
            )
    return rows


def headline_rows(
    records: Sequence[Any], resamples: int = 500, level: float = DEFAULT_LEVEL, margin: float = DEFAULT_MARGIN
) -> List[Dict[str, Any]]:
    """From run records with saved test predictions: per-seed AUCs and the paired row noise."""
    with_preds: Dict[Group, List[Any]] = {}
    for r in records:
        if r.finished and r.predictions is not None:
            with_preds.setdefault(r.run.group, []).append(r)
    if not with_preds:
        return []
    boot: BootstrapAUCs = bootstrap_aucs(
        {g: [load_predictions(r.predictions) for r in runs] for g, runs in with_preds.items()},
        resamples=resamples,
        level=level,
    )
    groups = {
        g: SeedAUCs(list(boot.per_seed[g]), [r.metric("val", "auc") for r in runs]) for g, runs in with_preds.items()
    }
    return headline_from_groups(groups, lambda a, b: boot.difference(a, b, margin))


def headline_rows_from_seed_aucs(
    groups: Dict[Group, SeedAUCs],
    row_std: Callable[[Group, Group], float] = lambda a, b: 0.0,
    level: float = DEFAULT_LEVEL,
    margin: float = DEFAULT_MARGIN,
    resamples: int = 0,
) -> List[Dict[str, Any]]:
    """From per-seed AUCs alone (e.g. a committed results.csv); ``row_std`` supplies the paired
    row noise of each comparison where it is known (0: seeds only)."""
    return headline_from_groups(
        groups,
        lambda a, b: compare_seeds(
            groups[a].test, groups[b].test, level, margin, row_std=row_std(a, b), resamples=resamples
        ),
    )


def headline_csv_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """headline.csv: one line per (arch, MLET d, baseline d')."""
    return [
        {
            "arch": h["arch"],
            "mlet_d": h["d"],
            "mlet_k": h["k"],
            "k_chosen_by": h["k_chosen_by"],
            "mlet_seeds": h["seeds"],
            "mlet_test_auc": h["test_auc"],
            "baseline_d": bd,
            "baseline_seeds": h.get("baseline_seeds", {}).get(bd),
            "baseline_test_auc": h["baseline_test_auc"][bd],
            **{f"diff_{key}": value for key, value in diff.items()},
            "matches_up_to_baseline_d": h["matches_up_to_baseline_d"],
            "best_baseline_d": h["best_baseline_d"],
        }
        for h in rows
        for bd, diff in h["versus"].items()
    ]


_MARK = {"better": " ▲", "worse": " ▼", "equivalent": " ≈", "inconclusive": ""}


def _cell(v: Dict[str, Any]) -> str:
    if v.get("low") is None:
        return f"{v['delta']:+.4f} (< 2 seeds: no interval)"
    return f"{v['delta']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]{_MARK[v['verdict']]}"


def _span(low: float, high: float, fmt: str = "{:g}") -> str:
    return fmt.format(low) if low == high else f"{fmt.format(low)}–{fmt.format(high)}"


def _df_note(rows: Sequence[Dict[str, Any]]) -> str:
    """The degrees of freedom and seeds a side this report has: a fixed "about 2–4 with 3 seeds
    a side" was printed under 2-seed sweeps too."""
    seeds = [r["seeds"] for r in rows] + [n for r in rows for n in (r.get("baseline_seeds") or {}).values()]
    sides = f"{_span(min(seeds), max(seeds))} seed{'' if max(seeds) == 1 else 's'} a side"
    dfs = [
        v["df"]
        for r in rows
        for v in r["versus"].values()
        if v.get("low") is not None and v.get("df") is not None and math.isfinite(v["df"])
    ]
    return f"{_span(min(dfs), max(dfs), '{:.1f}')} here, with {sides}" if dfs else f"none, {sides}: no interval"


def headline_markdown(rows: Sequence[Dict[str, Any]]) -> List[str]:
    if not rows:
        return ["No arch has both baseline and MLET runs with saved test predictions.", ""]
    first = next(iter(rows[0]["versus"].values()))
    level, margin, resamples = first["level"], first["margin"], first.get("resamples") or 0
    rows_note = (
        f"plus the test-row noise of the difference from a paired bootstrap ({resamples} resamples)"
        if resamples
        else "without a test-row term (no saved predictions)"
    )
    lines = [
        f"MLET at width d (k chosen by validation AUC) against the baseline at every width d': test AUC "
        f"difference (mean over seeds, MLET − baseline) with a {level:.0%} Welch t interval. Seeds are the "
        f"replicates: the interval's error is each side's seed-to-seed standard error, {rows_note}, "
        f"with Welch–Satterthwaite degrees of freedom ({_df_note(rows)}). "
        f"▲/▼: the interval excludes 0 (better/worse). ≈: **equivalent** within ±{margin:g} AUC by an "
        f"equivalence test (TOST at {1 - level:.0%}: the {1 - 2 * (1 - level):.0%} interval lies inside "
        f"±{margin:g}). Unmarked: **inconclusive** (neither a difference nor an equivalence is shown). "
        f"**matches up to d'** = equivalent or better at d' and at every smaller width ('–': not even at "
        "the smallest); **beats** = significantly better; **vs best baseline** = against the baseline "
        "width with the best validation AUC.",
        "",
    ]
    for arch in sorted({r["arch"] for r in rows}, key=arch_key):
        sub = [r for r in rows if r["arch"] == arch]
        widths = sorted(sub[0]["versus"])
        seeds = sub[0].get("baseline_seeds") or {}
        lines += [
            f"**{arch}** (baseline test AUC: "
            + ", ".join(
                f"d={w} {sub[0]['baseline_test_auc'][w]:.4f}"
                + (f" ({seeds[w]} seed{'' if seeds[w] == 1 else 's'})" if w in seeds else "")
                for w in widths
            )
            + ")",
            "",
            "| MLET d | k | seeds | test AUC | "
            + " | ".join(f"vs d'={w}" for w in widths)
            + " | matches up to d' | beats d' | vs best baseline |",
            "|---:|---:|---:|---:|" + "---:|" * len(widths) + "---:|---|---:|",
        ]
        for r in sub:
            cells = [_cell(r["versus"][w]) for w in widths]
            reach = "–" if r["matches_up_to_baseline_d"] is None else str(r["matches_up_to_baseline_d"])
            beats = ", ".join(str(w) for w in r["beats_baseline_d"]) or "–"
            best = r["vs_best_baseline"]
            lines.append(
                f"| {r['d']} | {r['k']} | {r['seeds']} | {r['test_auc']:.4f} | "
                + " | ".join(cells)
                + f" | {reach} | {beats} | {best['delta']:+.4f} ({best['verdict']}) vs d'={r['best_baseline_d']} |"
            )
        lines.append("")
    return lines
