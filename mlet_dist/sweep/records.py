"""The finished runs of a sweep, read back from their run dirs, and their per-configuration means.

Shared by the report's tables, figures, rare-item and headline sections (and refresh.py's CSV
writer), so that every part of the report aggregates the same runs the same way.
"""

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_prep.generate.planted import attainable_gap_closed
from mlet_dist.sweep.config import RunSpec, SweepConfig
from mlet_dist.sweep.plotting import arch_key
from mlet_dist.training.dead_run import dead_run_of
from mlet_dist.training.diagnostics import PREDICTIONS_DIR


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


def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return None, None, 0
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None), len(xs)


def format_mean_std(mean: Optional[float], std: Optional[float], digits: int = 4) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def format_int(x: Optional[float]) -> str:
    return "–" if x is None else f"{int(round(x)):,}"


def group_order(group: tuple) -> tuple:
    arch, model, d, k = group
    return (*arch_key(arch), model != "baseline", k or 0, d)


def aggregate(records: Sequence[RunRecord], bayes_test: Optional[float] = None) -> List[Dict[str, Any]]:
    groups: Dict[tuple, List[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.run.group, []).append(r)
    rows = []
    for group in sorted(groups, key=group_order):
        recs = [r for r in groups[group] if r.finished]
        arch, model, d, k = group
        row: Dict[str, Any] = {
            "arch": arch,
            "model": model,
            "d": d,
            "k": k,
            "seeds_finished": len(recs),
            "seeds_planned": len(groups[group]),
            # seeds whose summary says dead_run (val AUC stuck near 0.5): still in the
            # means, but counted and listed so that they are never averaged silently
            "seeds_dead": sum(dead_run_of(r.summary) is True for r in recs),
        }
        first = recs[0].summary if recs else {}
        row["params_serving"] = (first or {}).get("params_serving")
        row["params_training"] = (first or {}).get("params_training")
        for split in ("val", "test"):
            for name in ("auc", "logloss"):
                m, s, _ = mean_std([r.metric(split, name) for r in recs])
                row[f"{split}_{name}_mean"], row[f"{split}_{name}_std"] = m, s
        m, s, _ = mean_std([(r.summary or {}).get("train_seconds") for r in recs])
        row["train_seconds_mean"], row["train_seconds_std"] = m, s
        if bayes_test is not None and row["test_auc_mean"] is not None:
            row["test_gap_closed"] = attainable_gap_closed(row["test_auc_mean"], bayes_test)
        for part in ("table", "projection", "wide"):
            m, s, n = mean_std([((r.diagnostics or {}).get("mean") or {}).get(f"{part}_effective_rank") for r in recs])
            if n:
                row[f"{part}_effective_rank_mean"], row[f"{part}_effective_rank_std"] = m, s
        rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})


def config_label(model: str, d: int, k: Optional[int]) -> str:
    return f"baseline d={d}" if model == "baseline" else f"MLET k={k} d={d}"
