"""Rewrite a committed report's headline from its own results.csv, without its run directories.

    python -m mlet_dist.sweep.refresh reports/planted [--margin 0.003] [--level 0.95]

A full report (`mlet-sweep --report-only`) needs every run directory (saved test predictions,
the dataset for the rare-item buckets); the committed reports/ keep only the aggregates. The
headline, though, needs only each run's test and validation AUC (results.csv: seeds are the
replicates) and, for the small test-row term, the paired-bootstrap row std of each comparison,
which the previous headline stored in report.json (0 where it has none, and the report says
so). This rewrites headline.csv, report.json's ``headline`` and the headline section of report.md;
every other file stays as it was.
"""

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mlet_dist.sweep.headline import (
    Group,
    SeedAUCs,
    headline_csv_rows,
    headline_markdown,
    headline_rows_from_seed_aucs,
)
from mlet_dist.sweep.records import write_csv
from mlet_dist.sweep.significance import DEFAULT_LEVEL, DEFAULT_MARGIN

SECTION = "## Headline: MLET d vs baseline d'"


def _float(x: str) -> Optional[float]:
    return float(x) if x not in ("", None) else None


def seed_aucs_from_results(path: Path) -> Dict[Group, SeedAUCs]:
    """Per configuration, the per-seed test/val AUCs of the runs that saved test predictions
    (the runs the original headline used)."""
    groups: Dict[Group, SeedAUCs] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            test = _float(row["test_auc"])
            if test is None or row.get("predictions", "True") != "True":
                continue
            g: Group = (row["arch"], row["model"], int(row["d"]), int(row["k"]) if row["k"] else None)
            groups.setdefault(g, SeedAUCs()).test.append(test)
            groups[g].val.append(_float(row["val_auc"]))
    return groups


def previous_row_stds(report: Dict[str, Any]) -> Tuple[Dict[Tuple[str, int, Optional[int], int], float], int]:
    """(arch, MLET d, k, baseline d') -> row std of the old headline, and its resample count."""
    stds, resamples = {}, 0
    for h in report.get("headline") or []:
        for bd, diff in h["versus"].items():
            if diff.get("row_std") is not None:
                stds[(h["arch"], int(h["d"]), h["k"], int(bd))] = float(diff["row_std"])
                resamples = max(resamples, int(diff.get("resamples") or 0))
    return stds, resamples


def replace_section(markdown: str, new_lines: List[str], note: str) -> str:
    """report.md with the headline section's body replaced (up to the next ``## `` heading)."""
    start = markdown.index(SECTION)
    body = start + len(SECTION)
    end = markdown.find("\n## ", body)
    end = len(markdown) if end < 0 else end + 1
    return markdown[:body] + "\n\n" + note + "\n\n" + "\n".join(new_lines) + "\n" + markdown[end:]


def refresh(report_dir: Path, margin: float = DEFAULT_MARGIN, level: float = DEFAULT_LEVEL) -> List[Dict[str, Any]]:
    report_dir = Path(report_dir)
    report = json.loads((report_dir / "report.json").read_text())
    groups = seed_aucs_from_results(report_dir / "results.csv")
    stds, resamples = previous_row_stds(report)
    missing: List[Tuple[Any, ...]] = []

    def row_std(mlet: Group, base: Group) -> float:
        key = (mlet[0], mlet[2], mlet[3], base[2])
        if key not in stds:
            missing.append(key)
        return stds.get(key, 0.0)

    rows = headline_rows_from_seed_aucs(groups, row_std, level, margin, resamples)
    rows_note = (
        f"the row term is the previous paired bootstrap's ({resamples} resamples, from report.json)"
        if stds
        else "no row term (the previous report had none)"
    )
    if missing:
        rows_note += f"; missing for {len(missing)} comparison(s), counted as 0"
    note = (
        f"_Headline recomputed from `results.csv` by `python -m mlet_dist.sweep.refresh {report_dir}"
        f"{'' if margin == DEFAULT_MARGIN else f' --margin {margin:g}'}` (seeds as replicates, Welch t, "
        f"TOST margin ±{margin:g}); {rows_note}. The rest of the report is unchanged._"
    )
    write_csv(report_dir / "headline.csv", headline_csv_rows(rows) or [{"note": "no baseline/MLET pair"}])
    report["headline"] = rows
    report["headline_statistic"] = {
        "method": "welch_t_over_seeds+tost",
        "level": level,
        "margin": margin,
        "row_term": rows_note,
        "refreshed_from": "results.csv",
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = report_dir / "report.md"
    md.write_text(replace_section(md.read_text(), headline_markdown(rows), note))
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlet_dist.sweep.refresh", description=__doc__.splitlines()[0])
    p.add_argument("report_dirs", type=Path, nargs="+", help="committed report directories (reports/<name>)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="equivalence margin in AUC (TOST)")
    p.add_argument("--level", type=float, default=DEFAULT_LEVEL, help="confidence level of the intervals")
    args = p.parse_args(argv)
    for d in args.report_dirs:
        try:
            rows = refresh(d, args.margin, args.level)
        except (OSError, KeyError, ValueError) as err:
            print(f"refresh: {d}: {err}", file=sys.stderr)
            return 2
        print(f"[refresh] {d}: {len(rows)} headline row(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
