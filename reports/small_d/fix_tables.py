"""Markdown tables of reports/small_d/README.md section 4 (issue 20's fix candidates).

    python reports/small_d/fix_tables.py runs/sweeps/small_d_reduced \
        "matched, lr 0.15=runs/sweeps/small_d_fix_matched" \
        "paper, scaled lr=runs/sweeps/small_d_fix_paper_k64_d4,runs/sweeps/small_d_fix_paper_k128_d4" ...

The first argument is the reference, DIR[,DIR...]: the reduced check (baseline and the paper-init MLET at
lr 0.05), then dirs whose baseline runs only are added (the extra seeds');
each further argument is LABEL=DIR[,DIR...], one candidate whose run dirs are merged. Per candidate:
test AUC per seed, then paired by seed (same data order, same test rows) candidate − baseline at the
same d and candidate − the paper default at the same (k, d), with the seeds that are >= 0 counted.
Baselines that a candidate's sweep reran are checked against the reference, run by run. Last, the
first candidate − each other one, paired, at the (k, d) both ran.
"""

import sys
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import Runs, _name, load, paired, per_seed  # noqa: E402


def merged(dirs: str) -> Runs:
    out: Runs = {}
    for d in dirs.split(","):
        for key, seeds in load(Path(d)).items():
            out.setdefault(key, {}).update(seeds)
    return out


def _count(a: dict, b: dict) -> str:
    seeds = sorted(set(a) & set(b))
    return f"{sum(1 for s in seeds if a[s][0] >= b[s][0])}/{len(seeds)}"


def main(ref_dirs: str, candidates: List[Tuple[str, str]]) -> None:
    first, *more = ref_dirs.split(",")
    ref = load(Path(first))
    reduced = load(Path(first))  # what reruns are checked against
    for key, seeds in merged(",".join(more)).items() if more else ():
        if key[0] == "baseline":  # only the baselines of the extra dirs (they may hold candidate runs too)
            ref.setdefault(key, {}).update(seeds)
    loaded = [(label, merged(dirs)) for label, dirs in candidates]
    for label, runs in loaded:
        for key in (k for k in runs if k[0] == "baseline"):
            seeds = sorted(set(runs[key]) & set(reduced.get(key, {})))
            same = all(runs[key][s] == reduced[key][s] for s in seeds)
            print(f"<!-- {label}: rerun {_name(key)} seeds {seeds} identical to the reference: {same} -->")
        mlet = {k: v for k, v in runs.items() if k[0] == "mlet"}
        print("\n".join(per_seed(mlet, label)), "\n")
        print(
            f"| {label} | − baseline same d: mean [95 % t] | ≥ baseline | − paper default (lr 0.05): mean [95 % t] | ≥ paper |"
        )
        print("|---|---|---:|---|---:|")
        for key in sorted(mlet, key=lambda k: (k[2], k[1] or 0)):
            base = ref.get(("baseline", None, key[2]))
            paper = ref.get(key)
            vs_base = (
                (paired(mlet[key], base, equivalence=False), _count(mlet[key], base))
                if base
                else ("no baseline at this d", "–")
            )
            vs_paper = (paired(mlet[key], paper, equivalence=False), _count(mlet[key], paper)) if paper else ("–", "–")
            print(f"| {_name(key)} | {vs_base[0]} | {vs_base[1]} | {vs_paper[0]} | {vs_paper[1]} |")
        print()
    if len(loaded) < 2:
        return
    (first, a), others = loaded[0], loaded[1:]
    print("| configuration | candidate − candidate, test AUC: mean [95 % t] | ≥ |\n|---|---|---:|")
    for label, b in others:
        for key in sorted((k for k in a if k in b and k[0] == "mlet"), key=lambda k: (k[2], k[1] or 0)):
            print(
                f"| {_name(key)}: {first} − {label} | {paired(a[key], b[key], equivalence=False)} | {_count(a[key], b[key])} |"
            )


if __name__ == "__main__":
    pairs = [tuple(a.split("=", 1)) for a in sys.argv[2:]]
    main(sys.argv[1], [(p[0], p[1]) for p in pairs])
