"""How the projections W evolve during training: effective rank vs step, from the runs' logs.

train.py with ``--diagnostics`` logs a "spectra" event at every evaluation point (the spectrum
of each table's W, k×d). This reads them back from each run's ``metrics.jsonl`` and plots the
mean effective rank over tables (and seeds) against the global step, one line per MLET (k, d).
A W whose effective rank stays well below d is being used as a low-rank map; the follow-up MLET
paper (arXiv 2309.15881) explains the gain by such adaptive, low-rank updates.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from mlet_dist.sweep.plotting import arch_key, message_figure, pyplot


def _spectra_events(run_dir: Path) -> List[Dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if e.get("event") == "spectra" and "effective_rank_mean" in e:
            events.append(e)
    by_step = {e["step"]: e for e in events}  # a resumed attempt may repeat steps: keep the last
    return [by_step[s] for s in sorted(by_step)]


def spectra_rows(records: Sequence[Any]) -> List[Dict[str, Any]]:
    """Per (arch, k, d, step): mean ± std over seeds of the tables' mean effective rank of W."""
    points: Dict[Tuple[str, int, int, int], List[float]] = {}
    for r in records:
        if not r.finished or r.run.model != "mlet":
            continue
        for e in _spectra_events(r.run_dir):
            points.setdefault((r.run.arch, r.run.k, r.run.d, e["step"]), []).append(e["effective_rank_mean"])
    rows = []
    for (arch, k, d, step), values in sorted(points.items()):
        rows.append(
            {
                "arch": arch,
                "k": k,
                "d": d,
                "step": step,
                "effective_rank_mean": float(np.mean(values)),
                "effective_rank_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "seeds": len(values),
            }
        )
    return rows


def spectra_plot(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    archs = sorted({r["arch"] for r in rows}, key=arch_key)
    if not archs:
        message_figure(
            path,
            "no projection spectra in the runs' metrics.jsonl\n(train.py --diagnostics logs them "
            "at every evaluation point;\nruns made before that feature have none)",
        )
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(archs), figsize=(6.4 * len(archs), 4.6), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        sub = [r for r in rows if r["arch"] == arch]
        for d in sorted({r["d"] for r in sub}):
            ax.axhline(d, color="grey", linestyle=":", linewidth=0.8)
        for k, d in sorted({(r["k"], r["d"]) for r in sub}, key=lambda p: (p[1], p[0])):
            pts = sorted((r for r in sub if (r["k"], r["d"]) == (k, d)), key=lambda r: r["step"])
            ax.plot(
                [p["step"] for p in pts],
                [p["effective_rank_mean"] for p in pts],
                marker="o",
                markersize=3,
                label=f"k={k} d={d}",
            )
        ax.set_xlabel("global step")
        ax.set_ylabel("effective rank of W (mean over tables, seeds)")
        ax.set_title(f"{arch}: projection spectra during training (dotted: d)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
