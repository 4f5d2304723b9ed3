"""Tables of reports/small_d/README.md section 9 (issue 28's regression check with the CLI defaults):
test AUC per seed of every configuration of a sweep, the detector's verdicts, and MLET d=4 against
baseline d=4 seed by seed, from the sweep's run dirs (finished runs only: a partial sweep says so).

    python reports/small_d/defaults_tables.py runs/sweeps/small_d_defaults
"""

import json
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlet_dist.sweep.significance import compare_seeds  # noqa: E402

Config = Tuple[str, int, Optional[int]]  # model, d, k


def _parse(name: str) -> Tuple[Config, int]:
    """dlrm-mlet-k64-d4-s0 -> (("mlet", 4, 64), 0); dlrm-baseline-d4-s1 -> (("baseline", 4, None), 1)."""
    parts = name.split("-")
    k = int(parts[2][1:]) if parts[1] == "mlet" else None
    return (parts[1], int(parts[-2][1:]), k), int(parts[-1][1:])


def collect(runs_dir: Path) -> Dict[Config, Dict[int, dict]]:
    out: Dict[Config, Dict[int, dict]] = {}
    for summary in sorted(runs_dir.glob("dlrm-*/summary.json")):
        config, seed = _parse(summary.parent.name)
        out.setdefault(config, {})[seed] = json.loads(summary.read_text())
    return out


def _label(config: Config) -> str:
    model, d, k = config
    return f"baseline d={d}" if k is None else f"MLET k={k} d={d}"


def main(runs_dir: Path) -> None:
    runs = collect(runs_dir)
    seeds = sorted({s for per in runs.values() for s in per})
    print("| model | " + " | ".join(f"seed {s}" for s in seeds) + " | flagged |")
    print("|---|" + "---:|" * len(seeds) + "---|")
    order = sorted(runs, key=lambda c: (c[0] != "baseline", c[2] or 0, c[1]))
    for config in order:
        per = runs[config]
        cells = [f"{per[s]['trained']['test']['auc']:.4f}" if s in per else "" for s in seeds]
        flagged = [f"s{s} {per[s]['dead_run'].get('kind')}" for s in sorted(per) if per[s]["dead_run"].get("kind")]
        print(f"| {_label(config)} | " + " | ".join(cells) + f" | {', '.join(flagged) or f'0/{len(per)}'} |")
    base = runs.get(("baseline", 4, None), {})
    for k in (32, 64, 128):
        mlet = runs.get(("mlet", 4, k), {})
        paired = sorted(set(mlet) & set(base))
        if len(paired) < 1:
            continue
        deltas = [mlet[s]["trained"]["test"]["auc"] - base[s]["trained"]["test"]["auc"] for s in paired]
        a = [mlet[s]["trained"]["test"]["auc"] for s in paired]
        b = [base[s]["trained"]["test"]["auc"] for s in paired]
        diff = compare_seeds(a, b)
        below = sum(x < 0 for x in deltas)
        print(
            f"- MLET k={k} d=4 − baseline d=4: {diff.delta:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] "
            f"({diff.verdict}); per seed {', '.join(f'{x:+.4f}' for x in deltas)}; below on {below}/{len(paired)}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
