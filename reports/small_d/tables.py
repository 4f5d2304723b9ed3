"""Markdown tables of reports/small_d/README.md from the reduced check's run directories.

    python reports/small_d/tables.py runs/sweeps/small_d_reduced runs/sweeps/small_d_reduced_matched
    python reports/small_d/tables.py runs/sweeps/small_d      # one grid: MLET − baseline at each d

Per configuration and seed: test AUC at the validation-selected point and the dead-run verdict;
paired by seed: matched init − paper init, and MLET d=4 − baseline d=4. Seeds are the replicates:
the mean paired difference gets a t interval over seeds (95 %), and "equivalent" is claimed only
when the 90 % interval lies inside ±MARGIN (TOST at 5 %).
"""

import json
import math
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlet_dist.sweep.significance import t_ppf  # noqa: E402

MARGIN = 0.003
Runs = Dict[Tuple[str, Optional[int], int], Dict[int, Tuple[float, Optional[bool]]]]


def load(root: Path) -> Runs:
    """(model, k, d) -> seed -> (test AUC, dead)."""
    out: Runs = {}
    for run_dir in sorted(root.glob("dlrm-*")):
        summary_path = run_dir / "summary.json"
        m = re.match(r"dlrm-(baseline|mlet)-(?:k(\d+)-)?d(\d+)-s(\d+)$", run_dir.name)
        if not m or not summary_path.is_file():
            continue
        s = json.loads(summary_path.read_text())
        key = (m.group(1), int(m.group(2)) if m.group(2) else None, int(m.group(3)))
        dead = (s.get("dead_run") or {}).get("dead")
        out.setdefault(key, {})[int(m.group(4))] = (float(s["trained"]["test"]["auc"]), dead)
    return out


def _name(key: Tuple[str, Optional[int], int]) -> str:
    model, k, d = key
    return f"baseline d={d}" if model == "baseline" else f"MLET k={k} d={d}"


def per_seed(runs: Runs, label: str) -> List[str]:
    seeds = sorted({s for v in runs.values() for s in v})
    lines = [
        f"| {label} | " + " | ".join(f"seed {s}" for s in seeds) + " | dead |",
        "|---|" + "---:|" * len(seeds) + "---:|",
    ]
    for key in sorted(runs, key=lambda k: (k[0] != "baseline", k[1] or 0, k[2])):
        cells = [f"{runs[key][s][0]:.4f}" if s in runs[key] else "–" for s in seeds]
        dead = sum(1 for v in runs[key].values() if v[1])
        lines.append(f"| {_name(key)} | " + " | ".join(cells) + f" | {dead}/{len(runs[key])} |")
    return lines


def paired(
    a: Dict[int, Tuple[float, Optional[bool]]], b: Dict[int, Tuple[float, Optional[bool]]], equivalence: bool = True
) -> str:
    """Mean (a − b) over the seeds both have, its 95 % t interval, the per-seed values and a verdict
    (``equivalence=False``: better / worse / inconclusive only)."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s][0] - b[s][0] for s in seeds]
    n = len(diffs)
    if n < 2:
        return f"{n} seed(s): inconclusive"
    mean = sum(diffs) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1) / n)
    lo95, hi95 = mean - t_ppf(0.975, n - 1) * se, mean + t_ppf(0.975, n - 1) * se
    lo90, hi90 = mean - t_ppf(0.95, n - 1) * se, mean + t_ppf(0.95, n - 1) * se
    if equivalence and -MARGIN < lo90 and hi90 < MARGIN:
        verdict = f"equivalent within ±{MARGIN}"
    elif lo95 > 0:
        verdict = "better"
    elif hi95 < 0:
        verdict = "worse"
    else:
        verdict = "inconclusive"
    values = ", ".join(f"{x:+.4f}" for x in diffs)
    return f"{mean:+.4f} [{lo95:+.4f}, {hi95:+.4f}] ({n} seeds: {values}) {verdict}"


def main(paper_root: Path, matched_root: Path) -> None:
    paper, matched = load(paper_root), load(matched_root)
    print("\n".join(per_seed(paper, "paper init (default)")), "\n")
    print("\n".join(per_seed(matched, "matched init")), "\n")
    print("| configuration | matched − paper, test AUC: mean [95 % t interval] |\n|---|---|")
    for key in sorted(matched, key=lambda k: (k[1] or 0, k[2])):
        if key in paper:
            print(f"| {_name(key)} | {paired(matched[key], paper[key])} |")
    print("\n| MLET d=4 − baseline d=4 | test AUC: mean [95 % t interval] |\n|---|---|")
    base = paper.get(("baseline", None, 4))
    for label, runs in (("paper", paper), ("matched", matched)):
        for key in sorted(k for k in runs if k[0] == "mlet" and k[2] == 4):
            if base:
                print(f"| {_name(key)} ({label}) | {paired(runs[key], base)} |")


def main_one(root: Path) -> None:
    """One grid (configs/sweep_small_d.yaml): per-seed table, then MLET − baseline at the same d,
    paired by seed, with how many seeds MLET is not below the baseline."""
    runs = load(root)
    print("\n".join(per_seed(runs, "model")), "\n")
    print("| MLET − baseline at the same d | test AUC: mean [95 % t interval] | seeds not below |\n|---|---|---|")
    for key in sorted((k for k in runs if k[0] == "mlet"), key=lambda k: (k[2], k[1] or 0)):
        base = runs.get(("baseline", None, key[2]))
        if base:
            seeds = sorted(set(runs[key]) & set(base))
            not_below = sum(runs[key][s][0] >= base[s][0] for s in seeds)
            print(f"| {_name(key)} | {paired(runs[key], base, equivalence=False)} | {not_below}/{len(seeds)} |")


if __name__ == "__main__":
    if len(sys.argv) == 2:
        main_one(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
