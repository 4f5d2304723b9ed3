"""Tables of reports/small_d/README.md section 8 (issue 28): test AUC at the selected point per seed
and the detector's verdict, from run directories, and seed-level comparisons (Welch t, TOST) with the
sweep's own statistics (mlet_dist/sweep/significance.py).

    python reports/small_d/memorisation_tables.py LABEL::RUN_DIR[,RUN_DIR...] ... [--compare A::B ...]
"""

import json
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlet_dist.sweep.significance import compare_seeds  # noqa: E402


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _verdict(summary: dict) -> str:
    """The detector's kind, "ok", or "n/a" for a run made before it saw losses; "1 ep": one epoch only."""
    verdict = summary.get("dead_run") or {}
    kind = "n/a" if "memorising" not in verdict else verdict.get("kind") or "ok"
    return f"{kind} (1 ep)" if summary.get("epochs") == 1 else kind


def rows(groups: Dict[str, List[Path]]) -> Dict[str, List[float]]:
    """Print one markdown row per group; return its test AUCs (seeds in the order given)."""
    aucs: Dict[str, List[float]] = {}
    print("| run | test AUC per seed (val) | selected step | detector |\n|---|---|---:|---|")
    for label, dirs in groups.items():
        summaries = [_summary(d) for d in dirs]
        aucs[label] = [s["trained"]["test"]["auc"] for s in summaries]
        cells = " / ".join(f"{s['trained']['test']['auc']:.4f} ({s['trained']['val']['auc']:.4f})" for s in summaries)
        steps = "/".join(str(s["selected_step"]) for s in summaries)
        kinds = "/".join(_verdict(s) for s in summaries)
        print(f"| {label} | {cells} | {steps} | {kinds} |")
    return aucs


def main(argv: List[str]) -> None:
    split = argv.index("--compare") if "--compare" in argv else len(argv)
    groups = {t: [Path(d) for d in ds.split(",")] for t, ds in (a.split("::", 1) for a in argv[:split])}
    aucs = rows(groups)
    for pair in argv[split + 1 :]:
        a, b = pair.split("::")
        diff = compare_seeds(aucs[a], aucs[b])
        print(
            f"- {a} − {b}: {diff.delta:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] ({diff.verdict}; "
            f"seeds {diff.seeds_a}/{diff.seeds_b})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
