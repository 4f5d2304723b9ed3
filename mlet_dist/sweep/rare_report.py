"""The report's rare-item section: per (arch, d) with a baseline and an MLET configuration, the
test AUC in each item-frequency bucket (mean ± std over seeds), as rows and as markdown."""

from typing import Any, Dict, List, Sequence, Tuple

from mlet_dist.sweep.config import SweepConfig
from mlet_dist.sweep.plotting import arch_key
from mlet_dist.sweep.rare_items import RareItemScorer, bucket_labels
from mlet_dist.sweep.records import RunRecord, format_mean_std, config_label, mean_std, group_order
from mlet_dist.training.diagnostics import load_predictions


def rare_item_rows(cfg: SweepConfig, records: Sequence[RunRecord]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Per (arch, d that has a baseline and an MLET config, config, bucket): AUC mean ± std."""
    with_preds = [r for r in records if r.finished and r.predictions is not None]
    base_d = {(r.run.arch, r.run.d) for r in with_preds if r.run.model == "baseline"}
    mlet_d = {(r.run.arch, r.run.d) for r in with_preds if r.run.model == "mlet"}
    pairs = base_d & mlet_d
    ri = cfg.rare_items
    info: Dict[str, Any] = {
        "edges": ri.edges,
        "aggregate": ri.aggregate,
        "min_rows": ri.min_rows,
        "features": ri.features,
        "pairs": sorted(pairs),
    }
    if not pairs:
        return [], info
    assert cfg.runs_dir is not None
    scorer = RareItemScorer(
        cfg.data, ri.features, ri.aggregate, ri.edges, ri.min_rows, cache=cfg.runs_dir / "train_id_counts.npz"
    )
    info.update(scorer.describe())
    per_config: Dict[tuple, List[list]] = {}
    for r in with_preds:
        if (r.run.arch, r.run.d) not in pairs:
            continue
        buckets = scorer.score(load_predictions(r.predictions))  # type: ignore[arg-type]
        per_config.setdefault(r.run.group, []).append(buckets)
    rows = []
    for group in sorted(per_config, key=group_order):
        arch, model, d, k = group
        runs = per_config[group]
        for i, name in enumerate(bucket_labels(ri.edges)):
            m, s, n = mean_std([b[i].auc for b in runs])
            rows.append(
                {
                    "arch": arch,
                    "d": d,
                    "model": model,
                    "k": k,
                    "config": config_label(model, d, k),
                    "bucket_index": i,
                    "bucket": name,
                    "rows": runs[0][i].rows,
                    "positives": runs[0][i].positives,
                    "auc_mean": m,
                    "auc_std": s,
                    "seeds": n,
                }
            )
    return rows, info


def rare_markdown(rare_rows: Sequence[Dict[str, Any]], names: Sequence[str]) -> List[str]:
    lines: List[str] = []
    for arch, d in sorted({(r["arch"], r["d"]) for r in rare_rows}, key=lambda p: (arch_key(p[0]), p)):
        sub = [r for r in rare_rows if r["arch"] == arch and r["d"] == d]
        configs = sorted({r["config"] for r in sub}, key=lambda c: (not c.startswith("baseline"), c))
        lines += [
            f"**{arch}, d={d}**",
            "",
            "| bucket (train count) | test rows | positives | " + " | ".join(configs) + " | best MLET − baseline |",
            "|---|---:|---:|" + "---:|" * len(configs) + "---:|",
        ]
        for i, name in enumerate(names):
            cells = {r["config"]: r for r in sub if r["bucket_index"] == i}
            any_row = next(iter(cells.values()))
            if any_row["rows"] == 0:
                continue
            base = next((c for c in configs if c.startswith("baseline")), None)
            mlet_means = [
                cells[c]["auc_mean"]
                for c in configs
                if not c.startswith("baseline") and cells.get(c) and cells[c]["auc_mean"] is not None
            ]
            delta = "–"
            if base and cells[base]["auc_mean"] is not None and mlet_means:
                delta = f"{max(mlet_means) - cells[base]['auc_mean']:+.4f}"
            lines.append(
                f"| {name} | {any_row['rows']:,} | {any_row['positives']:,} | "
                + " | ".join(
                    format_mean_std(cells[c]["auc_mean"], cells[c]["auc_std"]) if c in cells else "–" for c in configs
                )
                + f" | {delta} |"
            )
        lines.append("")
    return lines
