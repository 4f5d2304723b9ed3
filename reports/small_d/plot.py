"""Figures of reports/small_d/README.md (issue 20), from run directories and probe.py outputs.

    python reports/small_d/plot.py curves OUT.png TITLE::RUN_DIR[,RUN_DIR...] ...
    python reports/small_d/plot.py probe OUT.png LABEL::PROBE.jsonl ...
    python reports/small_d/plot.py dense OUT.png LABEL::PROBE.jsonl ...

curves: validation AUC at every evaluation point, one line per run (seed), one panel per TITLE;
a dead run (summary.json dead_run) is drawn dashed. probe: embedding norm, dot-interaction size,
alive top-MLP units and loss over the first steps, one line per LABEL. dense: the share of
bottom-MLP output units alive and the bottom-MLP output's norm (issue 28), one line per LABEL.
"""

import json
import re
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlet_dist.sweep.plotting import pyplot  # noqa: E402


def _points(run_dir: Path) -> List[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") in ("eval", "epoch")]


def curves(out: Path, panels: Dict[str, List[Path]]) -> None:
    plt = pyplot()
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, dirs) in zip(axes.flat, panels.items()):
        for run_dir in dirs:
            pts = sorted({e["step"]: e for e in _points(run_dir)}.values(), key=lambda e: e["step"])
            summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
            dead = bool((summary.get("dead_run") or {}).get("dead"))
            match = re.search(r"s(\d+)$", run_dir.name)
            seed = match.group(1) if match else run_dir.name
            ax.plot(
                [e["step"] for e in pts],
                [e["val"]["auc"] for e in pts],
                marker="o",
                markersize=3,
                linestyle="--" if dead else "-",
                label=f"seed {seed}" + (" (dead)" if dead else ""),
            )
        ax.axhspan(0.45, 0.55, color="red", alpha=0.08)  # the dead-run band
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("val AUC")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def probe(out: Path, probes: Dict[str, Path]) -> None:
    plt = pyplot()
    keys = [
        ("e_norm", "mean |pooled embedding| (d-wide)"),
        ("dot_rms", "rms of the dot interactions"),
        ("alive_units", "top-MLP last hidden units alive"),
        ("loss", "train loss (batch)"),
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    for label, path in probes.items():
        rows = [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]
        for ax, (key, title) in zip(axes, keys):
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=".", label=label)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def dense(out: Path, probes: Dict[str, Path]) -> None:
    plt = pyplot()
    keys = [("dense_alive", "bottom-MLP output units alive (share of d)"), ("x_norm", "mean |bottom-MLP output|")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.0 * len(keys), 3.6))
    for label, path in probes.items():
        rows = [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]
        for ax, (key, title) in zip(axes, keys):
            ax.plot(
                [r["step"] for r in rows],
                [r[key] for r in rows],
                marker=".",
                label=label,
                linestyle="--" if label.startswith("slow") else "-",
            )
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: List[str]) -> None:
    kind, out, specs = argv[0], Path(argv[1]), argv[2:]
    pairs = [s.split("::", 1) for s in specs]
    if kind == "curves":
        curves(out, {title: [Path(p) for p in paths.split(",")] for title, paths in pairs})
    elif kind == "probe":
        probe(out, {label: Path(p) for label, p in pairs})
    elif kind == "dense":
        dense(out, {label: Path(p) for label, p in pairs})
    else:
        raise SystemExit(f"unknown figure {kind!r}: curves, probe or dense")


if __name__ == "__main__":
    main(sys.argv[1:])
