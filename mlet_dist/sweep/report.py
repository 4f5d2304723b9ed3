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

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_prep.dataset_format import read_meta
from data_prep.planted import attainable_gap_closed
from mlet_dist.sweep.config import RunSpec, SweepConfig
from mlet_dist.sweep.headline import headline_csv_rows, headline_markdown, headline_rows
from mlet_dist.sweep.plotting import arch_key, message_figure, pyplot
from mlet_dist.sweep.rare_items import RareItemScorer, bucket_labels
from mlet_dist.sweep.spectra_plot import spectra_plot, spectra_rows
from mlet_dist.training.dead_run import dead_run_of
from mlet_dist.training.diagnostics import PREDICTIONS_DIR, load_predictions

REPORT_FILES = ("report.md", "report.json", "results.csv", "table.csv", "pareto.png", "rare_items.csv",
                "rare_items.png", "headline.csv", "spectra.png")


@dataclass
class RunRecord:
    run: RunSpec
    run_dir: Path
    summary: Optional[Dict[str, Any]]
    diagnostics: Optional[Dict[str, Any]]

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def metric(self, split: str, name: str) -> Optional[float]:
        try:
            v = self.summary["trained"][split][name]  # type: ignore[index]
        except (KeyError, TypeError):
            return None
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    @property
    def predictions(self) -> Optional[Path]:
        path = self.run_dir / PREDICTIONS_DIR / "test.npz"
        return path if path.is_file() else None


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect(cfg: SweepConfig) -> List[RunRecord]:
    records = []
    for run in cfg.runs():
        run_dir = cfg.run_dir(run)
        summary = _read_json(run_dir / "summary.json")
        diagnostics = (summary or {}).get("diagnostics")
        records.append(RunRecord(run, run_dir, summary, diagnostics))
    return records


def _mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return None, None, 0
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None), len(xs)


def _fmt(mean: Optional[float], std: Optional[float], digits: int = 4) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _fmt_int(x: Optional[float]) -> str:
    return "–" if x is None else f"{int(round(x)):,}"


def _order(group: tuple) -> tuple:
    arch, model, d, k = group
    return (*arch_key(arch), model != "baseline", k or 0, d)


def aggregate(records: Sequence[RunRecord], bayes_test: Optional[float] = None) -> List[Dict[str, Any]]:
    groups: Dict[tuple, List[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.run.group, []).append(r)
    rows = []
    for group in sorted(groups, key=_order):
        recs = [r for r in groups[group] if r.finished]
        arch, model, d, k = group
        row: Dict[str, Any] = {"arch": arch, "model": model, "d": d, "k": k,
                               "seeds_finished": len(recs), "seeds_planned": len(groups[group]),
                               # seeds whose summary says dead_run (val AUC stuck near 0.5): still in the
                               # means, but counted and listed so that they are never averaged silently
                               "seeds_dead": sum(dead_run_of(r.summary) is True for r in recs)}
        first = recs[0].summary if recs else {}
        row["params_serving"] = (first or {}).get("params_serving")
        row["params_training"] = (first or {}).get("params_training")
        for split in ("val", "test"):
            for name in ("auc", "logloss"):
                m, s, _ = _mean_std([r.metric(split, name) for r in recs])
                row[f"{split}_{name}_mean"], row[f"{split}_{name}_std"] = m, s
        m, s, _ = _mean_std([(r.summary or {}).get("train_seconds") for r in recs])
        row["train_seconds_mean"], row["train_seconds_std"] = m, s
        if bayes_test is not None and row["test_auc_mean"] is not None:
            row["test_gap_closed"] = attainable_gap_closed(row["test_auc_mean"], bayes_test)
        for part in ("table", "projection", "wide"):
            m, s, n = _mean_std([((r.diagnostics or {}).get("mean") or {}).get(f"{part}_effective_rank")
                                 for r in recs])
            if n:
                row[f"{part}_effective_rank_mean"], row[f"{part}_effective_rank_std"] = m, s
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})


def _label(model: str, d: int, k: Optional[int]) -> str:
    return f"baseline d={d}" if model == "baseline" else f"MLET k={k} d={d}"


# ----------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------


def pareto_plot(rows: Sequence[Dict[str, Any]], path: Path, bayes_test: Optional[float], title: str) -> None:
    plt = pyplot()
    archs = sorted({r["arch"] for r in rows}, key=arch_key)
    fig, axes = plt.subplots(1, len(archs), figsize=(6.4 * len(archs), 4.8), squeeze=False)
    markers = ["s", "^", "D", "v", "P", "X"]
    for ax, arch in zip(axes[0], archs):
        done = [r for r in rows if r["arch"] == arch and r["test_auc_mean"] is not None and r["params_serving"]]
        curves: List[Tuple[str, List[Dict[str, Any]], Dict[str, Any]]] = []
        base = sorted([r for r in done if r["model"] == "baseline"], key=lambda r: r["params_serving"])
        if base:
            curves.append(("baseline", base, {"marker": "o", "color": "black", "linestyle": "-"}))
        for i, k in enumerate(sorted({r["k"] for r in done if r["model"] == "mlet"})):
            pts = sorted([r for r in done if r["model"] == "mlet" and r["k"] == k], key=lambda r: r["params_serving"])
            curves.append((f"MLET k={k}", pts, {"marker": markers[i % len(markers)], "linestyle": "--"}))
        for name, pts, style in curves:
            x = [p["params_serving"] for p in pts]
            y = [p["test_auc_mean"] for p in pts]
            err = [p["test_auc_std"] or 0.0 for p in pts]
            line = ax.errorbar(x, y, yerr=err, capsize=3, label=name, **style)
            for p in pts:
                ax.annotate(f"d={p['d']}", (p["params_serving"], p["test_auc_mean"]), textcoords="offset points",
                            xytext=(4, -10 if name == "baseline" else 5), fontsize=7,
                            color=line[0].get_color())
        if bayes_test is not None:
            ax.axhline(bayes_test, color="grey", linestyle=":", label=f"Bayes-optimal ({bayes_test:.4f})")
        ax.set_xscale("log")
        ax.set_xlabel("parameters at serving (collapsed model)")
        ax.set_ylabel("test AUC (mean ± std over seeds)")
        ax.set_title(f"{arch}: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rare_items_plot(rare_rows: Sequence[Dict[str, Any]], names: Sequence[str], path: Path) -> None:
    plt = pyplot()
    panels = sorted({(r["arch"], r["d"]) for r in rare_rows}, key=lambda p: (arch_key(p[0]), p))
    if not panels:
        message_figure(path, "no baseline/MLET pair with saved test predictions")
        return
    cols = min(len(panels), 3)  # one row per arch when there are 3 widths: readable, not a strip
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (arch, d) in zip(axes.flat, panels):
        sub = [r for r in rare_rows if r["arch"] == arch and r["d"] == d]
        for label in sorted({r["config"] for r in sub}, key=lambda c: (not c.startswith("baseline"), c)):
            pts = sorted([r for r in sub if r["config"] == label], key=lambda r: r["bucket_index"])
            pts = [p for p in pts if p["auc_mean"] is not None]
            if not pts:
                continue
            style = {"marker": "o", "color": "black"} if label.startswith("baseline") else {"marker": "s",
                                                                                            "linestyle": "--"}
            ax.errorbar([p["bucket_index"] for p in pts], [p["auc_mean"] for p in pts],
                        yerr=[p["auc_std"] or 0.0 for p in pts], capsize=3, label=label, **style)
        counts = {r["bucket_index"]: r["rows"] for r in sub}
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f"{n}\n({counts.get(i, 0):,})" for i, n in enumerate(names)], fontsize=7)
        ax.set_xlabel("train count of the example's ids (bucket; test rows)")
        ax.set_ylabel("test AUC within bucket")
        ax.set_title(f"{arch}, d={d}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------
# Rare items
# ----------------------------------------------------------------------------


def rare_item_rows(cfg: SweepConfig, records: Sequence[RunRecord]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Per (arch, d that has a baseline and an MLET config, config, bucket): AUC mean ± std."""
    with_preds = [r for r in records if r.finished and r.predictions is not None]
    base_d = {(r.run.arch, r.run.d) for r in with_preds if r.run.model == "baseline"}
    mlet_d = {(r.run.arch, r.run.d) for r in with_preds if r.run.model == "mlet"}
    pairs = base_d & mlet_d
    ri = cfg.rare_items
    info: Dict[str, Any] = {"edges": ri.edges, "aggregate": ri.aggregate, "min_rows": ri.min_rows,
                            "features": ri.features, "pairs": sorted(pairs)}
    if not pairs:
        return [], info
    assert cfg.runs_dir is not None
    scorer = RareItemScorer(cfg.data, ri.features, ri.aggregate, ri.edges, ri.min_rows,
                            cache=cfg.runs_dir / "train_id_counts.npz")
    info.update(scorer.describe())
    per_config: Dict[tuple, List[list]] = {}
    for r in with_preds:
        if (r.run.arch, r.run.d) not in pairs:
            continue
        buckets = scorer.score(load_predictions(r.predictions))  # type: ignore[arg-type]
        per_config.setdefault(r.run.group, []).append(buckets)
    rows = []
    for group in sorted(per_config, key=_order):
        arch, model, d, k = group
        runs = per_config[group]
        for i, name in enumerate(bucket_labels(ri.edges)):
            m, s, n = _mean_std([b[i].auc for b in runs])
            rows.append({"arch": arch, "d": d, "model": model, "k": k, "config": _label(model, d, k),
                         "bucket_index": i, "bucket": name, "rows": runs[0][i].rows,
                         "positives": runs[0][i].positives, "auc_mean": m, "auc_std": s, "seeds": n})
    return rows, info


def _rare_markdown(rare_rows: Sequence[Dict[str, Any]], names: Sequence[str]) -> List[str]:
    lines: List[str] = []
    for arch, d in sorted({(r["arch"], r["d"]) for r in rare_rows}, key=lambda p: (arch_key(p[0]), p)):
        sub = [r for r in rare_rows if r["arch"] == arch and r["d"] == d]
        configs = sorted({r["config"] for r in sub}, key=lambda c: (not c.startswith("baseline"), c))
        lines += [f"**{arch}, d={d}**", "",
                  "| bucket (train count) | test rows | positives | " + " | ".join(configs)
                  + " | best MLET − baseline |",
                  "|---|---:|---:|" + "---:|" * len(configs) + "---:|"]
        for i, name in enumerate(names):
            cells = {r["config"]: r for r in sub if r["bucket_index"] == i}
            any_row = next(iter(cells.values()))
            if any_row["rows"] == 0:
                continue
            base = next((c for c in configs if c.startswith("baseline")), None)
            mlet_means = [cells[c]["auc_mean"] for c in configs if not c.startswith("baseline")
                          and cells.get(c) and cells[c]["auc_mean"] is not None]
            delta = "–"
            if base and cells[base]["auc_mean"] is not None and mlet_means:
                delta = f"{max(mlet_means) - cells[base]['auc_mean']:+.4f}"
            lines.append(f"| {name} | {any_row['rows']:,} | {any_row['positives']:,} | "
                         + " | ".join(_fmt(cells[c]["auc_mean"], cells[c]["auc_std"]) if c in cells else "–"
                                      for c in configs)
                         + f" | {delta} |")
        lines.append("")
    return lines


# ----------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------


def _data_section(cfg: SweepConfig, meta: Dict[str, Any]) -> List[str]:
    splits = meta["splits"]
    sizes = meta["table_sizes"]
    lines = [f"- data: `{cfg.data}` (`{meta['dataset']}`): "
             f"{splits['train']['rows']:,} train / {splits['val']['rows']:,} val / {splits['test']['rows']:,} "
             f"test rows, {len(sizes)} tables, {sum(sizes.values()):,} ids in total "
             f"(largest {max(sizes.values()):,})"]
    planted = meta.get("planted")
    if planted:
        bayes = meta.get("bayes_auc", {})
        lines.append(f"- planted truth: rank R={planted['rank']}, Zipf exponent {planted['zipf_exponent']}, "
                     f"logit noise {planted['noise']}, interaction signal {planted['signal']}, "
                     f"dense signal {planted['dense_signal']}, positive rate "
                     f"{planted['positive_rate'].get('train', float('nan')):.3f}, seed {planted['seed']}")
        lines.append("- Bayes-optimal AUC (true probabilities vs drawn labels): "
                     + ", ".join(f"{s} {bayes[s]:.4f}" for s in ("train", "val", "test") if s in bayes)
                     + "; `gap closed` = (test AUC − 0.5) / (Bayes test AUC − 0.5)")
    return lines


def write_report(cfg: SweepConfig, statuses: Optional[Sequence[Any]] = None,
                 command: Optional[str] = None) -> Path:
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
        row = {"run_id": r.run.run_id, "arch": r.run.arch, "model": r.run.model, "d": r.run.d, "k": r.run.k,
               "seed": r.run.seed, "params_serving": s.get("params_serving"),
               "params_training": s.get("params_training"), "selected_epoch": s.get("selected_epoch"),
               "selected_step": s.get("selected_step"),
               "steps": s.get("steps"), "world_size": s.get("world_size"), "train_seconds": s.get("train_seconds")}
        for split in ("val", "test"):
            for name in ("auc", "logloss"):
                row[f"{split}_{name}"] = r.metric(split, name)
        mean = (r.diagnostics or {}).get("mean") or {}
        for part in ("table", "projection", "wide"):
            row[f"{part}_effective_rank"] = mean.get(f"{part}_effective_rank")
        row["predictions"] = r.predictions is not None
        row["dead_run"] = dead_run_of(s)  # None: the run predates the detector
        per_run.append(row)
    _write_csv(out / "results.csv", per_run)
    rows = aggregate(records, bayes_test)
    _write_csv(out / "table.csv", rows)
    pareto_plot(rows, out / "pareto.png", bayes_test, "test AUC vs serving parameters")
    rare_rows, rare_info = rare_item_rows(cfg, records)
    _write_csv(out / "rare_items.csv", rare_rows or [{"note": "no baseline/MLET pair at the same d has predictions"}])
    names = bucket_labels(cfg.rare_items.edges)
    rare_items_plot(rare_rows, names, out / "rare_items.png")
    spectra = spectra_rows(records)
    spectra_plot(spectra, out / "spectra.png")
    headline = (headline_rows(records, cfg.bootstrap_resamples, margin=cfg.equivalence_margin)
                if cfg.bootstrap_resamples else [])
    _write_csv(out / "headline.csv", headline_csv_rows(headline) or [
        {"note": "no baseline/MLET pair with saved test predictions (or bootstrap_resamples: 0)"}])

    has_gap = bayes_test is not None
    lines = [f"# Sweep report: {cfg.name}", ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    lines += _data_section(cfg, meta)
    lines += [f"- runs: {len(finished)} of {len(records)} finished"
              + (f"; missing/failed: {', '.join(missing)}" if missing else ""),
              *([f"- **dead runs** (best val AUC within 0.5 ± band after the required evaluation points: "
                 f"the model stayed at the constant predictor; included in the means, marked in `seeds`): "
                 f"{', '.join(dead)}"] if dead else []),
              f"- each run: `train.py {' '.join(cfg.train_args)}` + per-run `--arch --model -d [-k] --seed`"
              + "".join(f"; {a}: `{' '.join(v)}`" for a, v in {**cfg.arch_args, **cfg.model_args}.items()),
              f"- launch: {cfg.launch.world_size} rank(s) per run, {cfg.launch.threads_per_rank} thread(s) per "
              "rank; each run's model is its evaluation point (end of epoch, or every --eval-every steps) "
              "with the best validation AUC", ""]
    lines += ["## Accuracy and size", "",
              "| arch | model | d | k | params (serving) | params (training) | val AUC | test AUC | "
              + ("gap closed | " if has_gap else "") + "train time (s) | seeds |",
              "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_gap else "") + "---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['model']} | {r['d']} | {r['k'] or '–'} | {_fmt_int(r['params_serving'])} | "
            f"{_fmt_int(r['params_training'])} | {_fmt(r['val_auc_mean'], r['val_auc_std'])} | "
            f"{_fmt(r['test_auc_mean'], r['test_auc_std'])} | "
            + (f"{_fmt(r.get('test_gap_closed'), None, 3)} | " if has_gap else "")
            + f"{_fmt(r['train_seconds_mean'], r['train_seconds_std'], 1)} | "
            f"{r['seeds_finished']}/{r['seeds_planned']}"
            + (f" ({r['seeds_dead']} dead)" if r["seeds_dead"] else "") + " |")
    lines += ["", "![test AUC vs serving parameters](pareto.png)", "", "## Headline: MLET d vs baseline d'", ""]
    lines += headline_markdown(headline) if cfg.bootstrap_resamples else ["Skipped (report.bootstrap_resamples: 0).", ""]
    lines += ["## Rare items", "",
              f"Test examples bucketed by the train count of their ids ({rare_info['aggregate']} over "
              f"{'all sparse features' if not cfg.rare_items.features else ', '.join(cfg.rare_items.features)}); "
              f"AUC within each bucket (buckets under {cfg.rare_items.min_rows} rows or with one class get none).", ""]
    lines += _rare_markdown(rare_rows, names) if rare_rows else [
        "No baseline/MLET pair at the same d has saved test predictions (`predictions/test.npz`).", ""]
    lines += ["![AUC by item frequency](rare_items.png)", ""]
    diag_rows = [r for r in rows if "table_effective_rank_mean" in r]
    if diag_rows:
        rank_note = f" The planted truth has rank {meta['planted']['rank']}." if meta.get("planted") else ""
        lines += ["## Projection diagnostics", "",
                  "Effective rank = exp(entropy of the normalised singular values), mean over tables and seeds, "
                  "of the serving table (baseline table or collapsed T·W, n×d), the projection W (k×d) and the "
                  f"wide table T (n×k).{rank_note}", "",
                  "| arch | model | d | k | serving table | W | T |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in diag_rows:
            lines.append(f"| {r['arch']} | {r['model']} | {r['d']} | {r['k'] or '–'} | "
                         f"{_fmt(r.get('table_effective_rank_mean'), r.get('table_effective_rank_std'), 2)} | "
                         f"{_fmt(r.get('projection_effective_rank_mean'), r.get('projection_effective_rank_std'), 2)} | "
                         f"{_fmt(r.get('wide_effective_rank_mean'), r.get('wide_effective_rank_std'), 2)} |")
        lines.append("")
    if spectra:
        lines += ["During training (every evaluation point), the effective rank of W, mean over tables and seeds:",
                  "", "![projection spectra during training](spectra.png)", ""]
    lines += ["## Files", "",
              "`results.csv` (one row per run), `table.csv` (per configuration), `headline.csv`, `rare_items.csv`, "
              "`spectra.png`, "
              "`report.json`, `pareto.png`, `rare_items.png`.", ""]
    (out / "report.md").write_text("\n".join(lines))
    payload = {"name": cfg.name, "config": cfg.to_json(), "bayes_auc": meta.get("bayes_auc"), "runs": per_run,
               "table": rows, "headline": headline, "spectra_during_training": spectra, "rare_items": {"definition": rare_info, "rows": rare_rows}, "missing_runs": missing, "dead_runs": dead,
               "statuses": [s.to_json() for s in statuses] if statuses else None}
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out / "report.md"
