"""`mlet-sweep`: run an accuracy sweep (resumable) and write its report.

    mlet-sweep --config configs/sweep_tiny_planted.yaml             # run what is missing, report
    mlet-sweep --config CONFIG --dry-run                            # list the commands it would run
    mlet-sweep --config CONFIG --scheduler slurm --dry-run          # the sbatch script of each run (torchx)
    mlet-sweep --config CONFIG --report-only                        # report from what has finished
    mlet-sweep --config CONFIG --data DIR --runs-dir DIR --report-dir DIR   # override paths
    mlet-sweep --config configs/sweep_tiny_planted.yaml --report-only --report-dir reports/tiny_planted
                                                                    # refresh a committed report

Runs and reports go under runs/ (the configs' runs_dir and report_dir); the committed reports/
change only when --report-dir names them.

Exit status: 0 when every run of the grid has finished, 1 when some failed (the report is still
written from the others), 2 for a configuration error.
"""

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from mlet_dist.config_flags import DefaultsHelpFormatter

PROG = "mlet-sweep"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Baseline vs MLET accuracy sweep (DLRM / DCN-v2) and report.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--config", type=Path, required=True, help="sweep file (.yaml/.yml/.json), see configs/")
    p.add_argument("--data", type=Path, default=None, help="override the config's prepared dataset")
    p.add_argument("--runs-dir", type=Path, default=None, help="override where run dirs go")
    p.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="override where the report goes (configs: runs/sweeps/<name>/report; "
        "reports/<name> refreshes a committed report)",
    )
    p.add_argument("--cpu-budget", type=int, default=None, help="override launch.cpu_budget")
    p.add_argument(
        "--scheduler",
        default=None,
        help="override launch.scheduler: torchrun (local subprocesses) or a "
        "torchx scheduler (local_cwd, slurm, kubernetes, ...)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs that would be launched (with a torchx "
        "scheduler: each run's scheduler request), run nothing",
    )
    p.add_argument("--report-only", action="store_true", help="write the report from finished runs, launch none")
    p.add_argument("--no-report", action="store_true", help="run, but do not write the report")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from mlet_dist.log_setup import quiet_library_logs
    from mlet_dist.sweep.config import load_config
    from mlet_dist.sweep.report import write_report
    from mlet_dist.sweep.runner import ensure_data, run_sweep

    quiet_library_logs()
    overrides = {
        "data": args.data and str(args.data),
        "runs_dir": args.runs_dir and str(args.runs_dir),
        "report_dir": args.report_dir and str(args.report_dir),
    }
    try:
        cfg = load_config(args.config, overrides)
        if args.cpu_budget is not None:
            cfg.launch.cpu_budget = args.cpu_budget
        if args.scheduler is not None:
            cfg.launch.scheduler = args.scheduler
        cfg.launch.__post_init__()
    except (OSError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    statuses = None
    if not args.report_only:
        try:
            statuses = run_sweep(cfg, dry_run=args.dry_run)
        except (FileNotFoundError, ValueError) as err:  # no data; a bad torchx scheduler or component option
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 2
        if args.dry_run:
            return 0
    if not args.no_report:
        try:
            ensure_data(cfg)  # a `prepare` section regenerates the (deterministic) data if it was deleted
        except FileNotFoundError as err:
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 2
        run_flags = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--report-only", "--no-report")]
        command = " ".join([PROG, *map(shlex.quote, run_flags)])  # the command that makes runs and report
        path = write_report(cfg, statuses, command=command)
        print(f"[sweep] report: {path}")
    failed = [s for s in statuses or [] if s.status not in ("ok", "done")]
    for s in failed:
        print(f"[sweep] {s.status}: {s.run.run_id} (see {s.run_dir / 'launch.log'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
