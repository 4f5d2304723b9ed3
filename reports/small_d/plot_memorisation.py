"""Figure of reports/small_d/README.md section 8 (issue 28): per-step train loss, val logloss and
val AUC of runs, one row of panels per group, so a memorising run (train loss falling while the val
loss rises above the label entropy) is told from a stuck one at a glance.

    python reports/small_d/plot_memorisation.py OUT.png TITLE::RUN_DIR[,RUN_DIR...] ...
"""

import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlet_dist.sweep.plotting import pyplot  # noqa: E402

Series = Tuple[List[int], List[float]]


def _events(run_dir: Path) -> List[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _series(run_dir: Path) -> Dict[str, Series]:
    """train loss (every --log-every steps), val logloss and val AUC (every evaluation point), and
    the label entropy (val logloss / val NE) the constant predictor scores."""
    events = _events(run_dir)
    train = [e for e in events if e.get("event") == "train"]
    points = sorted(
        {e["step"]: e for e in events if e.get("event") in ("eval", "epoch")}.values(), key=lambda e: e["step"]
    )
    return {
        "train loss": ([e["step"] for e in train], [e["loss"] for e in train]),
        "val logloss": ([e["step"] for e in points], [e["val"]["logloss"] for e in points]),
        "val AUC": ([e["step"] for e in points], [e["val"]["auc"] for e in points]),
        "entropy": ([0], [points[0]["val"]["logloss"] / points[0]["val"]["ne"]] if points else []),
    }


def plot(out: Path, groups: Dict[str, List[Path]]) -> None:
    plt = pyplot()
    metrics = ("train loss", "val logloss", "val AUC")
    fig, axes = plt.subplots(len(groups), 3, figsize=(13, 3.0 * len(groups)), squeeze=False)
    for row, (title, dirs) in zip(axes, groups.items()):
        for run_dir in dirs:
            series = _series(run_dir)
            for ax, name in zip(row, metrics):
                ax.plot(*series[name], marker="." if name != "train loss" else None, label=run_dir.name)
            for ax in row[:2]:
                ax.axhline(series["entropy"][1][0], color="grey", lw=0.8, ls=":")  # constant predictor
        for ax, name in zip(row, metrics):
            ax.set_title(f"{title}: {name}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main(argv: List[str]) -> None:
    out, *specs = argv
    groups = {title: [Path(d) for d in dirs.split(",")] for title, dirs in (s.split("::", 1) for s in specs)}
    plot(Path(out), groups)


if __name__ == "__main__":
    main(sys.argv[1:])
