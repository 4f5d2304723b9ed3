"""`mlet-prep` command line: prepare datasets in the format described in FORMAT.md.

Usage:
  mlet-prep criteo-kaggle   SRC OUT            [common options]
  mlet-prep criteo-terabyte SRC [SRC ...] OUT  [common options]   (SRC: day files or a directory of day_N[.gz])
  mlet-prep torchrec-npy    DIR OUT [--table-sizes N,N,... | --max-ind-range N | --num-embeddings-per-feature N,...]
                            (TorchRec's day_N_{dense,sparse,labels}.npy or Kaggle train_*.npy)
  mlet-prep nvtabular       DIR OUT   (NVTabular parquet: train/ validation/ [test/] + schema.pbtxt)
  mlet-prep from-mlperf-multihot DIR OUT [--dense-labels DIR] [--table-sizes ...] [--max-bag N]
                            (MLPerf DLRM-DCNv2 day_N_sparse_multi_hot.npz + day_N_{dense,labels}.npy)
  mlet-prep from-dlrm-npz   FILE OUT [--day-count FILE] [--max-ind-range N]   (reference DLRM *_processed.npz)
  mlet-prep from-dlrm-bin   DIR OUT [--counts FILE] [--max-ind-range N]   (reference DLRM *_{train,val,test}.bin)
  mlet-prep avazu           SRC OUT [--seed N] [--val-fraction F] [--test-fraction F] [common options]
  mlet-prep synthetic       OUT --rows N [--table-sizes criteo-terabyte|criteo-kaggle|N|N,N,...]
                            [--zipf A] [--seed N] [--format parquet|criteo-tsv] [--size-mb MB]
                            [--multi-hot N] [--pooling sum|mean|C1=mean,...]
  mlet-prep planted         OUT [--rows N] [--tables T] [--cardinality C|C,C,...] [--rank R] [--zipf A]
                            [--noise S] [--seed X] [--dense D] [--signal G] [--dense-signal G]
                            [--positive-rate P] [--save-truth]   (labels from a known rank-R model;
                            meta.json records the Bayes-optimal AUC of each split)
Common options: --min-count N, --hash-size N, --count-memory-mb N, --rows-per-file N,
  --row-group-rows N, --block-mb N, --strict, --overwrite, --progress/--no-progress,
  --workers N (processes; default all cores), --engine local|dask, --scheduler tcp://HOST:8786,
  --vocab-from DIR (encode with an existing dataset's vocabulary: a later day gets the same ids)
  (raw-data kinds: criteo-kaggle, criteo-terabyte, avazu; the output is the same bytes in every mode).
Also runnable as `python -m data_prep.cli ...`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from data_prep.avazu import prepare_avazu
from data_prep.dataset_format import CRITEO_SPARSE_FEATURES
from data_prep.multi_hot import parse_pooling
from data_prep.criteo import prepare_criteo_kaggle, prepare_criteo_terabyte
from data_prep.parallel.engine import WorkerFailed
from data_prep.spec import PrepConfig, PrepResult
from data_prep.generate.planted import PlantedSpec, generate_planted
from data_prep.generate.synthetic import generate_dataset, parse_table_sizes, write_criteo_tsv
from data_prep.convert.torchrec_npy import prepare_torchrec_npy
from data_prep.convert.nvtabular import prepare_nvtabular
from data_prep.convert.subcommands import add_foreign_parsers, positive_int, run_foreign

PROG = "mlet-prep"
# Errors a user can fix from the message alone: print it, no traceback.
EXIT_USER_ERROR = 2
# The first converters' names, and the from-* spelling every converter has (argparse reports the alias used)
ALIASES = {"from-torchrec-npy": "torchrec-npy", "from-nvtabular": "nvtabular"}


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _add_common(p: argparse.ArgumentParser, vocab: bool = True) -> None:
    d = PrepConfig()
    if vocab:
        p.add_argument(
            "--min-count",
            type=positive_int,
            default=d.min_count,
            help=f"train values seen fewer times map to the shared rare id 0 (default {d.min_count})",
        )
        p.add_argument(
            "--hash-size",
            type=positive_int,
            default=None,
            help="tables that would have more ids are hashed into this many ids instead (default: no cap)",
        )
        p.add_argument(
            "--count-memory-mb",
            type=positive_int,
            default=d.count_memory_mb,
            help="memory cap for value counting; beyond it the largest features are hashed "
            f"(default {d.count_memory_mb})",
        )
        p.add_argument("--strict", action="store_true", help="fail on the first malformed line instead of rejecting it")
        p.add_argument(
            "--block-mb",
            type=positive_int,
            default=d.block_bytes >> 20,
            help=f"input megabytes parsed at a time (default {d.block_bytes >> 20})",
        )
        p.add_argument(
            "--workers",
            type=positive_int,
            default=os.cpu_count() or 1,
            help="worker processes over files and byte ranges; 1 = this process only "
            "(default: all cores). The output is the same bytes for any N",
        )
        p.add_argument(
            "--engine",
            choices=("local", "dask"),
            default="local",
            help="local: a process pool; dask: a Dask distributed cluster (default local)",
        )
        p.add_argument(
            "--scheduler",
            default=None,
            metavar="ADDR",
            help="dask scheduler address, e.g. tcp://host:8786 (implies --engine dask; "
            "default: a local cluster of --workers processes). Inputs and OUT must be "
            "on a filesystem every worker sees at the same paths",
        )
        p.add_argument(
            "--vocab-from",
            default=None,
            metavar="DIR",
            help="encode with the vocabulary of the prepared dataset DIR (e.g. the previous day's) "
            "instead of counting: same ids for the same values, id 0 for new ones, same "
            "table sizes; the vocabulary is copied into OUT",
        )
    p.add_argument(
        "--rows-per-file",
        type=positive_int,
        default=d.rows_per_file,
        help=f"max rows per parquet part file (default {d.rows_per_file})",
    )
    p.add_argument(
        "--row-group-rows",
        type=positive_int,
        default=d.row_group_rows,
        help=f"parquet row group size (default {d.row_group_rows})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset at OUT")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


DEFAULT_SYNTHETIC_TABLES = "criteo-kaggle"


def default_tables_warning(sizes: List[int]) -> str:
    """What the default tables cost a model, said before any work: a user who asked for a few
    thousand rows otherwise trains 8.6 GB of tables without knowing why it is slow."""
    k64_gb = sum(sizes) * 64 * 4 / 1e9
    return (
        f"--table-sizes not given: {DEFAULT_SYNTHETIC_TABLES} tables, {sum(sizes):,} rows in all (largest "
        f"{max(sizes):,}); a model of them holds {k64_gb:.1f} GB of fp32 tables at width 64 "
        f"({k64_gb / 4:.1f} GB at 16) however few --rows you generate; --table-sizes N for small tables"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Prepare training datasets (parquet + meta.json).")
    sub = parser.add_subparsers(dest="command", required=True)

    ck = sub.add_parser(
        "criteo-kaggle",
        help="Criteo Kaggle train.txt (TSV, plain or .gz) -> train/val/test parquet",
        description="Convert the Criteo Kaggle TSV into a prepared dataset directory.",
    )
    ck.add_argument("src", metavar="SRC", help="input TSV (plain or gzip)")
    ck.add_argument("out", metavar="OUT", help="output dataset directory (must not exist unless --overwrite)")
    _add_common(ck)

    tb = sub.add_parser(
        "criteo-terabyte",
        help="Criteo Terabyte day_0..day_23 (.gz) -> parquet (last day = val/test)",
        description="Convert Criteo Terabyte day files: all but the last are train, the last is "
        "halved into val and test.",
    )
    tb.add_argument(
        "paths", metavar="SRC", nargs="+", help="day files in order, or directories of day_N[.gz]; then OUT"
    )
    _add_common(tb)

    av = sub.add_parser(
        "avazu",
        help="Avazu train.csv (plain or .gz) -> parquet (random 80/10/10 split)",
        description="Convert the Avazu CSV (with header) into a prepared dataset directory.",
    )
    av.add_argument("src", metavar="SRC", help="input CSV (plain or gzip)")
    av.add_argument("out", metavar="OUT", help="output dataset directory")
    av.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    av.add_argument("--val-fraction", type=_fraction, default=0.1, help="fraction of rows for val (default 0.1)")
    av.add_argument("--test-fraction", type=_fraction, default=0.1, help="fraction of rows for test (default 0.1)")
    _add_common(av)

    sy = sub.add_parser(
        "synthetic",
        help="synthetic Criteo-schema data with power-law ids, at any table scale",
        description="Write a synthetic prepared dataset (parquet + meta.json) or raw Criteo TSV.",
    )
    sy.add_argument("out", metavar="OUT", help="output dataset directory (or TSV file with --format criteo-tsv)")
    sy.add_argument("--rows", type=int, default=None, help="rows to generate")
    sy.add_argument("--size-mb", type=float, default=None, help="criteo-tsv only: stop at this many MB of text")
    sy.add_argument(
        "--table-sizes",
        default=None,
        help="criteo-kaggle | criteo-terabyte | N (all tables) | 26 comma-separated N (default "
        f"{DEFAULT_SYNTHETIC_TABLES}, with a warning line saying how big a model of them is)",
    )
    sy.add_argument("--zipf", type=float, default=1.05, help="power-law exponent of id frequencies (default 1.05)")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--format", choices=("parquet", "criteo-tsv"), default="parquet")
    sy.add_argument(
        "--multi-hot",
        type=int,
        default=0,
        metavar="N",
        help="parquet only: every C feature is a bag of 0..N ids per row (empty bags included; "
        "FORMAT.md version 2); 0 = one id per row (default)",
    )
    sy.add_argument(
        "--pooling",
        default="sum",
        help="pooling recorded in meta.json for the model: sum | mean | C1=mean,C2=sum,... (default sum)",
    )
    _add_common(sy, vocab=False)

    tn = sub.add_parser(
        "torchrec-npy",
        aliases=["from-torchrec-npy"],
        help="TorchRec's Criteo day_N_{dense,sparse,labels}.npy -> parquet "
        "(last day = val/test; values copied, not transformed again)",
        description="Convert the .npy day files of torchrec's Criteo preprocessing.",
    )
    tn.add_argument("src", metavar="DIR", help="directory holding day_N_dense.npy, day_N_sparse.npy, day_N_labels.npy")
    tn.add_argument("out", metavar="OUT", help="output dataset directory")
    tn.add_argument(
        "--table-sizes", default=None, help="26 comma-separated table sizes; every id must fit (default: max id + 1)"
    )
    tn.add_argument(
        "--max-ind-range",
        type=positive_int,
        default=None,
        metavar="N",
        help="hash raw ids as TorchRec's reader does with --num_embeddings N: ids modulo N, every table N rows",
    )
    tn.add_argument(
        "--num-embeddings-per-feature",
        default=None,
        metavar="N,N,...",
        help="26 sizes, as TorchRec's --num_embeddings_per_feature: ids modulo each, the tables "
        "those sizes (TorchRec's reader hashes so at load time)",
    )
    _add_common(tn, vocab=False)

    nv = sub.add_parser(
        "nvtabular",
        aliases=["from-nvtabular"],
        help="NVTabular parquet (label, int_*, cat_* + schema.pbtxt) -> parquet (values copied, not transformed again)",
        description="Convert an NVTabular output directory: train/, validation/ (or valid/, val/), "
        "optionally test/, with part_*.parquet and schema.pbtxt (cardinalities). List "
        "cat_* columns (value_count / tag list in schema.pbtxt) become multi-hot bags.",
    )
    nv.add_argument("src", metavar="DIR", help="NVTabular output directory (one subdirectory per split)")
    nv.add_argument("out", metavar="OUT", help="output dataset directory")
    _add_common(nv, vocab=False)
    for p in add_foreign_parsers(sub):
        _add_common(p, vocab=False)

    d = PlantedSpec()
    pl = sub.add_parser(
        "planted",
        help="planted benchmark: Zipf ids, labels from a known rank-R interaction model",
        description="Write a prepared dataset whose labels come from a logistic model of pairwise "
        "interactions of rank-R ground-truth embeddings, plus dense features and "
        "unobserved logit noise; meta.json records the Bayes-optimal AUC per split "
        "(see data_prep/generate/planted.py).",
    )
    pl.add_argument("out", metavar="OUT", help="output dataset directory")
    pl.add_argument("--rows", type=int, default=d.rows, help=f"rows to generate (default {d.rows:,})")
    pl.add_argument("--tables", type=positive_int, default=d.tables, help=f"sparse features (default {d.tables})")
    pl.add_argument(
        "--cardinality",
        default=",".join(map(str, d.cardinality)),
        help=f"ids per table: one N for all, or T comma-separated (default {d.cardinality[0]:,})",
    )
    pl.add_argument(
        "--rank", type=positive_int, default=d.rank, help=f"rank R of the true embeddings (default {d.rank})"
    )
    pl.add_argument("--zipf", type=float, default=d.zipf, help=f"Zipf exponent of id frequencies (default {d.zipf})")
    pl.add_argument(
        "--noise", type=float, default=d.noise, help=f"std of the unobserved logit noise (default {d.noise})"
    )
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--dense", type=int, default=d.dense, help=f"dense features (default {d.dense})")
    pl.add_argument(
        "--signal", type=float, default=d.signal, help=f"std of the interaction part of the logit (default {d.signal})"
    )
    pl.add_argument(
        "--dense-signal",
        type=float,
        default=d.dense_signal,
        help=f"std of the dense part of the logit (default {d.dense_signal})",
    )
    pl.add_argument(
        "--positive-rate",
        type=float,
        default=d.positive_rate,
        help=f"target mean click probability (default {d.positive_rate})",
    )
    pl.add_argument("--save-truth", action="store_true", help="also write the true embeddings to OUT/planted_truth.npz")
    _add_common(pl, vocab=False)
    return parser


def format_summary(result: PrepResult, seconds: Optional[float] = None) -> str:
    """One paragraph for humans and CI logs."""
    split = result.split_rows
    sizes = result.table_sizes
    rejected = f"{result.rows_rejected:,} rejected"
    kinds = result.meta.get("rows_rejected_by_kind") or {}
    if kinds:
        rejected += " [" + ", ".join(f"{k}: {v:,}" for k, v in kinds.items()) + "]"
    if result.meta.get("rejects_file"):
        rejected += f" (see {result.out_dir / result.meta['rejects_file']})"
    text = (
        f"Read {result.rows_read:,} rows from {result.meta['source']}: kept "
        f"{split['train']:,} train / {split['val']:,} val / {split['test']:,} test, {rejected}. "
        f"{len(sizes)} embedding tables with {sum(sizes.values()):,} rows in total "
        f"(min_count={result.meta['min_count']})."
    )
    hashed = result.meta.get("hashed_features") or {}
    if hashed:
        text += f" Hashed features: {', '.join(f'{k} ({v})' for k, v in hashed.items())}."
    origin = (result.meta.get("vocabulary") or {}).get("from")
    if origin:
        text += f" Ids from the vocabulary of {origin['dir']} (--vocab-from; unseen values -> id 0)."
    if seconds is not None:
        text += f" {seconds:.1f} s."
    return text + f" Wrote {result.out_dir}."


def _config(args: argparse.Namespace) -> PrepConfig:
    kw = dict(
        rows_per_file=args.rows_per_file,
        row_group_rows=args.row_group_rows,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    if hasattr(args, "min_count"):
        kw.update(
            min_count=args.min_count,
            hash_size=args.hash_size,
            count_memory_mb=args.count_memory_mb,
            strict=args.strict,
            block_bytes=args.block_mb << 20,
            workers=args.workers,
            engine="dask" if args.scheduler else args.engine,
            scheduler=args.scheduler,
            vocab_from=args.vocab_from,
        )
    if getattr(args, "seed", None) is not None:
        kw["seed"] = args.seed
    return PrepConfig(**kw)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = ALIASES.get(args.command, args.command)
    t0 = time.perf_counter()
    try:
        cfg = _config(args)
        if args.command == "criteo-kaggle":
            result = prepare_criteo_kaggle(args.src, args.out, cfg)
        elif args.command == "criteo-terabyte":
            if len(args.paths) < 2:
                parser.error("criteo-terabyte needs SRC... OUT")
            result = prepare_criteo_terabyte(args.paths[:-1], args.paths[-1], cfg)
        elif args.command == "planted":
            try:
                cardinality = tuple(int(x) for x in args.cardinality.split(","))
            except ValueError:
                raise ValueError(f"--cardinality must be N or comma-separated N, got {args.cardinality!r}") from None
            spec = PlantedSpec(
                rows=args.rows,
                tables=args.tables,
                cardinality=cardinality,
                rank=args.rank,
                zipf=args.zipf,
                noise=args.noise,
                seed=args.seed,
                dense=args.dense,
                signal=args.signal,
                dense_signal=args.dense_signal,
                positive_rate=args.positive_rate,
            )
            result = generate_planted(args.out, spec, cfg, save_truth=args.save_truth)
            bayes = result.meta["bayes_auc"]
            print(format_summary(result, time.perf_counter() - t0))
            print("Bayes-optimal AUC: " + ", ".join(f"{s} {bayes[s]:.4f}" for s in ("train", "val", "test")))
            return 0
        elif args.command == "torchrec-npy":
            sizes = None if args.table_sizes is None else parse_table_sizes(args.table_sizes)
            per_feature = (
                None if args.num_embeddings_per_feature is None else parse_table_sizes(args.num_embeddings_per_feature)
            )
            result = prepare_torchrec_npy(
                args.src,
                args.out,
                cfg,
                table_sizes=sizes,
                max_ind_range=args.max_ind_range,
                num_embeddings_per_feature=per_feature,
            )
        elif args.command == "nvtabular":
            result = prepare_nvtabular(args.src, args.out, cfg)
        elif args.command.startswith("from-"):
            result = run_foreign(args, cfg)
        elif args.command == "avazu":
            result = prepare_avazu(
                args.src, args.out, cfg, val_fraction=args.val_fraction, test_fraction=args.test_fraction
            )
        else:
            sizes = parse_table_sizes(args.table_sizes or DEFAULT_SYNTHETIC_TABLES)
            if args.table_sizes is None:
                print(f"{PROG}: warning: {default_tables_warning(sizes)}", file=sys.stderr)
            if args.format == "criteo-tsv":
                if args.rows is None and args.size_mb is None:
                    raise ValueError("criteo-tsv needs --rows or --size-mb")
                if Path(args.out).exists() and not args.overwrite:
                    raise FileExistsError(f"output already exists: {args.out} (use --overwrite)")
                info = write_criteo_tsv(args.out, args.rows, args.size_mb, sizes, args.zipf, args.seed)
                print(f"Wrote {info['rows']:,} rows ({info['bytes'] / 1e6:,.1f} MB) of Criteo-like TSV to {args.out}.")
                return 0
            if args.rows is None:
                raise ValueError("synthetic needs --rows")
            pooling = parse_pooling(args.pooling, CRITEO_SPARSE_FEATURES)
            result = generate_dataset(
                args.out, args.rows, sizes, args.zipf, args.seed, cfg, multi_hot=args.multi_hot, pooling=pooling
            )
    except WorkerFailed as e:  # a worker died (killed, out of memory, lost node): nothing was published
        print(f"{PROG}: error: {e}; nothing was published, rerun to retry", file=sys.stderr)
        return 1
    except (FileExistsError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # missing input, read-only or full disk: say which file, no traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"{PROG}: error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(format_summary(result, time.perf_counter() - t0))
    gzip_damage = (result.meta.get("rows_rejected_by_kind") or {}).get("gzip")
    if gzip_damage:
        print(
            f"{PROG}: warning: {gzip_damage} gzip stream(s) end early (truncated or corrupt download): the rows "
            f"after the damage are missing from the dataset; rejects.tsv names the file and line",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
