"""The sweep report: tables, Pareto plot, rare-item analysis and projection diagnostics.

Written to ``report_dir``:

    report.md        everything below in one page, with the data set, definitions and caveats
    report.json      the same numbers, machine-readable
    results.csv      one row per finished run (the raw numbers behind every aggregate)
    table.csv        one row per configuration (arch, model, d, k): mean ± std over seeds
    pareto.png       test AUC vs parameters at serving, baseline curve vs MLET curve(s) per arch
    rare_items.csv   AUC per item-frequency bucket, baseline vs MLET at the same d
    rare_items.png   the same, one panel per (arch, d)
    headline.csv     MLET d (k chosen by val AUC) vs baseline d': test AUC difference, Welch t over
                     seeds (+ paired-bootstrap row noise), TOST equivalence within a margin
    spectra.png      effective rank of the projections W vs training step (runs with --diagnostics)

Only the validation-selected point of each run enters (the end of an epoch, or a step with
--eval-every; train.py selects it: summary.json's ``trained`` metrics). Mean ± std are over the seeds that finished (sample std, n - 1).
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from data_prep.dataset_format import read_meta
from mlet_dist.sweep.config import SweepConfig
from mlet_dist.sweep.headline import headline_csv_rows, headline_markdown, headline_rows
from mlet_dist.sweep.rare_items import bucket_labels
from mlet_dist.sweep.rare_report import rare_markdown, rare_item_rows
from mlet_dist.sweep.records import RunRecord, format_mean_std, format_int, write_csv, aggregate, collect
from mlet_dist.sweep.report_figures import pareto_plot, rare_items_plot
from mlet_dist.sweep.spectra_plot import spectra_plot, spectra_rows
from mlet_dist.training.dead_run import dead_run_of

__all__ = ["REPORT_FILES", "RunRecord", "collect", "write_report"]

REPORT_FILES = (
    "report.md",
    "report.json",
    "results.csv",
    "table.csv",
    "pareto.png",
    "rare_items.csv",
    "rare_items.png",
    "headline.csv",
    "spectra.png",
)


def _data_section(cfg: SweepConfig, meta: Dict[str, Any]) -> List[str]:
    splits = meta["splits"]
    sizes = meta["table_sizes"]
    lines = [
        f"- data: `{cfg.data}` (`{meta['dataset']}`): "
        f"{splits['train']['rows']:,} train / {splits['val']['rows']:,} val / {splits['test']['rows']:,} "
        f"test rows, {len(sizes)} tables, {sum(sizes.values()):,} ids in total "
        f"(largest {max(sizes.values()):,})"
    ]
    planted = meta.get("planted")
    if planted:
        bayes = meta.get("bayes_auc", {})
        lines.append(
            f"- planted truth: rank R={planted['rank']}, Zipf exponent {planted['zipf_exponent']}, "
            f"logit noise {planted['noise']}, interaction signal {planted['signal']}, "
            f"dense signal {planted['dense_signal']}, positive rate "
            f"{planted['positive_rate'].get('train', float('nan')):.3f}, seed {planted['seed']}"
        )
        lines.append(
            "- Bayes-optimal AUC (true probabilities vs drawn labels): "
            + ", ".join(f"{s} {bayes[s]:.4f}" for s in ("train", "val", "test") if s in bayes)
            + "; `gap closed` = (test AUC − 0.5) / (Bayes test AUC − 0.5)"
        )
    return lines


def write_report(cfg: SweepConfig, statuses: Optional[Sequence[Any]] = None, command: Optional[str] = None) -> Path:
    """Write every report file for the runs of ``cfg`` that have finished; returns report.md."""
    assert cfg.report_dir is not None
    out = cfg.report_dir
    out.mkdir(parents=True, exist_ok=True)
    meta = read_meta(cfg.data)
    bayes_test = (meta.get("bayes_auc") or {}).get("test")
    records = collect(cfg)
    finished = [r for r in records if r.finished]
    missing = [r.run.run_id for r in records if not r.finished]
    dead = [r.run.run_id for r in finished if dead_run_of(r.summary) is True]

    per_run = []
    for r in finished:
        s = r.summary or {}
        row = {
            "run_id": r.run.run_id,
            "arch": r.run.arch,
            "model": r.run.model,
            "d": r.run.d,
            "k": r.run.k,
            "seed": r.run.seed,
            "params_serving": s.get("params_serving"),
            "params_training": s.get("params_training"),
            "selected_epoch": s.get("selected_epoch"),
            "selected_step": s.get("selected_step"),
            "steps": s.get("steps"),
            "world_size": s.get("world_size"),
            "train_seconds": s.get("train_seconds"),
        }
        for split in ("val", "test"):
            for name in ("auc", "logloss"):
                row[f"{split}_{name}"] = r.metric(split, name)
        mean = (r.diagnostics or {}).get("mean") or {}
        for part in ("table", "projection", "wide"):
            row[f"{part}_effective_rank"] = mean.get(f"{part}_effective_rank")
        row["predictions"] = r.predictions is not None
        row["dead_run"] = dead_run_of(s)  # None: the run predates the detector
        per_run.append(row)
    write_csv(out / "results.csv", per_run)
    rows = aggregate(records, bayes_test)
    write_csv(out / "table.csv", rows)
    pareto_plot(rows, out / "pareto.png", bayes_test, "test AUC vs serving parameters")
    rare_rows, rare_info = rare_item_rows(cfg, records)
    write_csv(out / "rare_items.csv", rare_rows or [{"note": "no baseline/MLET pair at the same d has predictions"}])
    names = bucket_labels(cfg.rare_items.edges)
    rare_items_plot(rare_rows, names, out / "rare_items.png")
    spectra = spectra_rows(records)
    spectra_plot(spectra, out / "spectra.png")
    headline = (
        headline_rows(records, cfg.bootstrap_resamples, margin=cfg.equivalence_margin)
        if cfg.bootstrap_resamples
        else []
    )
    write_csv(
        out / "headline.csv",
        headline_csv_rows(headline)
        or [{"note": "no baseline/MLET pair with saved test predictions (or bootstrap_resamples: 0)"}],
    )

    has_gap = bayes_test is not None
    lines = [f"# Sweep report: {cfg.name}", ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    lines += _data_section(cfg, meta)
    lines += [
        f"- runs: {len(finished)} of {len(records)} finished"
        + (f"; missing/failed: {', '.join(missing)}" if missing else ""),
        *(
            [
                f"- **dead runs** (best val AUC within 0.5 ± band after the required evaluation points: "
                f"the model stayed at the constant predictor; included in the means, marked in `seeds`): "
                f"{', '.join(dead)}"
            ]
            if dead
            else []
        ),
        f"- each run: `train.py {' '.join(cfg.train_args)}` + per-run `--arch --model -d [-k] --seed`"
        + "".join(f"; {a}: `{' '.join(v)}`" for a, v in {**cfg.arch_args, **cfg.model_args}.items()),
        f"- launch: {cfg.launch.world_size} rank(s) per run, {cfg.launch.threads_per_rank} thread(s) per "
        "rank; each run's model is its evaluation point (end of epoch, or every --eval-every steps) "
        "with the best validation AUC",
        "",
    ]
    lines += [
        "## Accuracy and size",
        "",
        "| arch | model | d | k | params (serving) | params (training) | val AUC | test AUC | "
        + ("gap closed | " if has_gap else "")
        + "train time (s) | seeds |",
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_gap else "") + "---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['arch']} | {row['model']} | {row['d']} | {row['k'] or '–'} | {format_int(row['params_serving'])} | "
            f"{format_int(row['params_training'])} | {format_mean_std(row['val_auc_mean'], row['val_auc_std'])} | "
            f"{format_mean_std(row['test_auc_mean'], row['test_auc_std'])} | "
            + (f"{format_mean_std(row.get('test_gap_closed'), None, 3)} | " if has_gap else "")
            + f"{format_mean_std(row['train_seconds_mean'], row['train_seconds_std'], 1)} | "
            f"{row['seeds_finished']}/{row['seeds_planned']}"
            + (f" ({row['seeds_dead']} dead)" if row["seeds_dead"] else "")
            + " |"
        )
    lines += ["", "![test AUC vs serving parameters](pareto.png)", "", "## Headline: MLET d vs baseline d'", ""]
    lines += (
        headline_markdown(headline) if cfg.bootstrap_resamples else ["Skipped (report.bootstrap_resamples: 0).", ""]
    )
    lines += [
        "## Rare items",
        "",
        f"Test examples bucketed by the train count of their ids ({rare_info['aggregate']} over "
        f"{'all sparse features' if not cfg.rare_items.features else ', '.join(cfg.rare_items.features)}); "
        f"AUC within each bucket (buckets under {cfg.rare_items.min_rows} rows or with one class get none).",
        "",
    ]
    lines += (
        rare_markdown(rare_rows, names)
        if rare_rows
        else ["No baseline/MLET pair at the same d has saved test predictions (`predictions/test.npz`).", ""]
    )
    lines += ["![AUC by item frequency](rare_items.png)", ""]
    diag_rows = [row for row in rows if "table_effective_rank_mean" in row]
    if diag_rows:
        rank_note = f" The planted truth has rank {meta['planted']['rank']}." if meta.get("planted") else ""
        lines += [
            "## Projection diagnostics",
            "",
            "Effective rank = exp(entropy of the normalised singular values), mean over tables and seeds, "
            "of the serving table (baseline table or collapsed T·W, n×d), the projection W (k×d) and the "
            f"wide table T (n×k).{rank_note}",
            "",
            "| arch | model | d | k | serving table | W | T |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in diag_rows:
            lines.append(
                f"| {row['arch']} | {row['model']} | {row['d']} | {row['k'] or '–'} | "
                f"{format_mean_std(row.get('table_effective_rank_mean'), row.get('table_effective_rank_std'), 2)} | "
                f"{format_mean_std(row.get('projection_effective_rank_mean'), row.get('projection_effective_rank_std'), 2)} | "
                f"{format_mean_std(row.get('wide_effective_rank_mean'), row.get('wide_effective_rank_std'), 2)} |"
            )
        lines.append("")
    if spectra:
        lines += [
            "During training (every evaluation point), the effective rank of W, mean over tables and seeds:",
            "",
            "![projection spectra during training](spectra.png)",
            "",
        ]
    lines += [
        "## Files",
        "",
        "`results.csv` (one row per run), `table.csv` (per configuration), `headline.csv`, `rare_items.csv`, "
        "`spectra.png`, "
        "`report.json`, `pareto.png`, `rare_items.png`.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    payload = {
        "name": cfg.name,
        "config": cfg.to_json(),
        "bayes_auc": meta.get("bayes_auc"),
        "runs": per_run,
        "table": rows,
        "headline": headline,
        "spectra_during_training": spectra,
        "rare_items": {"definition": rare_info, "rows": rare_rows},
        "missing_runs": missing,
        "dead_runs": dead,
        "statuses": [s.to_json() for s in statuses] if statuses else None,
    }
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out / "report.md"
