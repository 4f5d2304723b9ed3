"""The report's Pareto plot (test AUC vs serving parameters) and rare-item AUC panels."""

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mlet_dist.sweep.plotting import arch_key, message_figure, pyplot


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
                ax.annotate(
                    f"d={p['d']}",
                    (p["params_serving"], p["test_auc_mean"]),
                    textcoords="offset points",
                    xytext=(4, -10 if name == "baseline" else 5),
                    fontsize=7,
                    color=line[0].get_color(),
                )
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
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (arch, d) in zip(axes.flat, panels):
        sub = [r for r in rare_rows if r["arch"] == arch and r["d"] == d]
        for label in sorted({r["config"] for r in sub}, key=lambda c: (not c.startswith("baseline"), c)):
            pts = sorted([r for r in sub if r["config"] == label], key=lambda r: r["bucket_index"])
            pts = [p for p in pts if p["auc_mean"] is not None]
            if not pts:
                continue
            style = (
                {"marker": "o", "color": "black"}
                if label.startswith("baseline")
                else {"marker": "s", "linestyle": "--"}
            )
            ax.errorbar(
                [p["bucket_index"] for p in pts],
                [p["auc_mean"] for p in pts],
                yerr=[p["auc_std"] or 0.0 for p in pts],
                capsize=3,
                label=label,
                **style,
            )
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
