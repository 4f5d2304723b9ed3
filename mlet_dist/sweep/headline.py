"""The headline of a sweep: up to which baseline width d' does MLET at width d hold its own?

For each arch and each MLET d, k is chosen by mean validation AUC (never by test). That MLET
configuration is compared with the baseline at every d' on test AUC (mean over seeds) with a
interval over test rows (paired bootstrap) and training seeds (``significance.py``):

* ``matches_up_to``: the largest d' such that MLET is not significantly worse than the baseline
  at d' *and at every smaller width* (an overfitting wide baseline cannot make a weak MLET
  "match" it);
* ``beats``: the widths d' where MLET is significantly better;
* ``vs_best``: the difference to the baseline width with the best mean validation AUC.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlet_dist.sweep.plotting import arch_key
from mlet_dist.sweep.significance import BootstrapAUCs, bootstrap_aucs
from mlet_dist.training.diagnostics import load_predictions

Group = Tuple[str, str, int, Optional[int]]  # arch, model, d, k


def _val_auc_mean(records: Sequence[Any]) -> Optional[float]:
    xs = [r.metric("val", "auc") for r in records]
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def headline_rows(records: Sequence[Any], resamples: int = 500, level: float = 0.95) -> List[Dict[str, Any]]:
    """One row per (arch, MLET d): the val-chosen k and its paired difference to each baseline d'."""
    with_preds: Dict[Group, List[Any]] = {}
    for r in records:
        if r.finished and r.predictions is not None:
            with_preds.setdefault(r.run.group, []).append(r)
    rows: List[Dict[str, Any]] = []
    for arch in sorted({g[0] for g in with_preds}, key=arch_key):
        baselines = sorted(g for g in with_preds if g[0] == arch and g[1] == "baseline")
        mlet = [g for g in with_preds if g[0] == arch and g[1] == "mlet"]
        if not baselines or not mlet:
            continue
        chosen: Dict[int, Group] = {}
        for g in mlet:  # k by validation AUC at each d
            best = chosen.get(g[2])
            if best is None or (_val_auc_mean(with_preds[g]) or -1.0) > (_val_auc_mean(with_preds[best]) or -1.0):
                chosen[g[2]] = g
        groups = baselines + [chosen[d] for d in sorted(chosen)]
        boot: BootstrapAUCs = bootstrap_aucs(
            {g: [load_predictions(r.predictions) for r in with_preds[g]] for g in groups},
            resamples=resamples, level=level)
        for d in sorted(chosen):
            g = chosen[d]
            versus = {b[2]: boot.difference(g, b) for b in baselines}
            matched = None
            for bd in sorted(versus):
                if versus[bd].verdict == "worse":
                    break
                matched = bd
            beaten = [bd for bd in sorted(versus) if versus[bd].verdict == "better"]
            best_base = max(baselines, key=lambda b: _val_auc_mean(with_preds[b]) or -1.0)
            rows.append({
                "arch": arch, "d": d, "k": g[3], "k_chosen_by": "val auc", "seeds": len(with_preds[g]),
                "test_auc": boot.point[g], "val_auc": _val_auc_mean(with_preds[g]),
                "versus": {bd: diff.to_json() for bd, diff in versus.items()},
                "baseline_test_auc": {b[2]: boot.point[b] for b in baselines},
                "matches_up_to_baseline_d": matched,
                "beats_baseline_d": beaten,
                "best_baseline_d": best_base[2],
                "vs_best_baseline": versus[best_base[2]].to_json(),
            })
    return rows


def headline_markdown(rows: Sequence[Dict[str, Any]]) -> List[str]:
    if not rows:
        return ["No arch has both baseline and MLET runs with saved test predictions.", ""]
    level = next(iter(rows[0]["versus"].values()))["level"]
    resamples = next(iter(rows[0]["versus"].values()))["resamples"]
    lines = [f"MLET at width d (k chosen by validation AUC) against the baseline at every width d': test AUC "
             f"difference (mean over seeds, MLET − baseline) with a {level:.0%} interval that counts both the "
             f"test rows (paired bootstrap, {resamples} resamples) and the seed-to-seed spread (standard error "
             "of each side's mean, in quadrature); ▲/▼ significantly better/worse. **matches up to d'** = "
             "not significantly worse than the baseline at d' and at every smaller width; **beats** = "
             "significantly better; **vs best baseline** = against the baseline width with the best "
             "validation AUC.", ""]
    for arch in sorted({r["arch"] for r in rows}, key=arch_key):
        sub = [r for r in rows if r["arch"] == arch]
        widths = sorted(sub[0]["versus"])
        lines += [f"**{arch}** (baseline test AUC: "
                  + ", ".join(f"d={w} {sub[0]['baseline_test_auc'][w]:.4f}" for w in widths) + ")", "",
                  "| MLET d | k | test AUC | " + " | ".join(f"vs d'={w}" for w in widths)
                  + " | matches up to d' | beats d' | vs best baseline |",
                  "|---:|---:|---:|" + "---:|" * len(widths) + "---:|---|---:|"]
        for r in sub:
            cells = []
            for w in widths:
                v = r["versus"][w]
                mark = {"better": " ▲", "worse": " ▼", "tie": ""}[v["verdict"]]
                cells.append(f"{v['delta']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]{mark}")
            reach = "–" if r["matches_up_to_baseline_d"] is None else str(r["matches_up_to_baseline_d"])
            beats = ", ".join(str(w) for w in r["beats_baseline_d"]) or "–"
            best = r["vs_best_baseline"]
            lines.append(f"| {r['d']} | {r['k']} | {r['test_auc']:.4f} | " + " | ".join(cells)
                         + f" | {reach} | {beats} | {best['delta']:+.4f} vs d'={r['best_baseline_d']} |")
        lines.append("")
    return lines
