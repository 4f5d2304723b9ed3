"""`mlet-prep` command line: prepare datasets in the format described in FORMAT.md.

Usage: mlet-prep criteo-kaggle SRC OUT [--min-count N] [--rows-per-file N] [--strict] [--overwrite]
Also runnable as `python -m data_prep.cli ...`.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from data_prep.criteo_kaggle import PrepConfig, PrepResult, prepare_criteo_kaggle

PROG = "mlet-prep"
# Errors a user can fix from the message alone: print it, no traceback.
EXIT_USER_ERROR = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = PrepConfig()
    parser = argparse.ArgumentParser(prog=PROG, description="Prepare training datasets (parquet + meta.json).")
    sub = parser.add_subparsers(dest="command", required=True)
    ck = sub.add_parser(
        "criteo-kaggle",
        help="Criteo Kaggle train.txt (TSV, plain or .gz) -> train/val/test parquet",
        description="Convert the Criteo Kaggle TSV into a prepared dataset directory.",
    )
    ck.add_argument("src", metavar="SRC", help="input TSV (plain or gzip)")
    ck.add_argument("out", metavar="OUT", help="output dataset directory (must not exist unless --overwrite)")
    ck.add_argument(
        "--min-count",
        type=_positive_int,
        default=defaults.min_count,
        help=f"train values seen fewer times map to id 0 (default {defaults.min_count})",
    )
    ck.add_argument(
        "--rows-per-file",
        type=_positive_int,
        default=defaults.rows_per_file,
        help=f"max rows per parquet part file (default {defaults.rows_per_file})",
    )
    ck.add_argument("--strict", action="store_true", help="fail on the first malformed line instead of rejecting it")
    ck.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset at OUT")
    return parser


def format_summary(result: PrepResult) -> str:
    """One paragraph for humans and CI logs."""
    split = result.split_rows
    sizes = result.table_sizes
    rejected = f"{result.rows_rejected:,} rejected"
    if result.meta.get("rejects_file"):
        rejected += f" (see {result.out_dir / result.meta['rejects_file']})"
    return (
        f"Read {result.rows_read:,} rows from {result.meta['source']}: kept "
        f"{split['train']:,} train / {split['val']:,} val / {split['test']:,} test, {rejected}. "
        f"{len(sizes)} embedding tables with {sum(sizes.values()):,} rows in total "
        f"(min_count={result.meta['min_count']}). Wrote {result.out_dir}."
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = prepare_criteo_kaggle(
            args.src,
            args.out,
            PrepConfig(
                min_count=args.min_count,
                rows_per_file=args.rows_per_file,
                strict=args.strict,
                overwrite=args.overwrite,
            ),
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
