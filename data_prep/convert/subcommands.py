"""`mlet-prep from-...` subcommands for datasets prepared by other tools (MLPerf's multi-hot
Criteo, the reference DLRM's .npz and .bin); kept apart from cli.py so its parser stays readable."""

from __future__ import annotations

import argparse
from typing import Any, List

from data_prep.convert.dlrm_reference import prepare_dlrm_bin, prepare_dlrm_npz
from data_prep.convert.mlperf_multihot import prepare_mlperf_multihot
from data_prep.spec import PrepConfig, PrepResult
from data_prep.generate.synthetic import parse_table_sizes


def positive_int(text: str) -> int:
    """argparse type of every count-like flag of mlet-prep (cli.py and the from-* converters)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_foreign_parsers(sub: Any) -> List[argparse.ArgumentParser]:
    """Add the subcommands; the caller adds its common output options to each returned parser."""
    ml = sub.add_parser(
        "from-mlperf-multihot",
        help="MLPerf DLRM-DCNv2 multi-hot Criteo (day_N_sparse_multi_hot.npz + day_N_dense/labels.npy) -> "
        "multi-hot parquet (values copied, not transformed again)",
        description="Convert the day files of torchrec_dlrm's materialize_synthetic_multihot_dataset.py: "
        "day_N_sparse_multi_hot.npz (members 0..25, int [rows, bag size]) with day_N_dense.npy and "
        "day_N_labels.npy. All days but the last are train; the last is halved into val (first "
        "ceil(rows/2)) and test, as the MLPerf reader does. Bag-size-1 features become single-hot "
        "columns, the others list<int64> bags (pooling sum).",
    )
    ml.add_argument("src", metavar="DIR", help="directory holding day_N_sparse_multi_hot.npz")
    ml.add_argument("out", metavar="OUT", help="output dataset directory")
    ml.add_argument(
        "--dense-labels",
        default=None,
        metavar="DIR",
        help="directory holding day_N_dense.npy and day_N_labels.npy when they were not copied next "
        "to the .npz files (the torchrec .npy directory; default: DIR)",
    )
    ml.add_argument(
        "--table-sizes",
        default=None,
        help="26 comma-separated table sizes, e.g. the MLPerf run's --num_embeddings_per_feature (default: max id + 1)",
    )
    ml.add_argument(
        "--max-bag",
        type=positive_int,
        default=None,
        metavar="N",
        help="refuse bags longer than N ids (default: no limit)",
    )

    nz = sub.add_parser(
        "from-dlrm-npz",
        help="reference DLRM *_processed.npz (X_int, X_cat, y, counts) -> parquet (dense logged once here)",
        description="Convert facebookresearch/dlrm's data_utils.py output: kaggleAdDisplayChallenge_processed.npz or "
        "terabyte_processed.npz with its <raw>_day_count.npz. All days but the last are train; the last "
        "is split as the reference does (test the first ceil(rows/2), val the rest). The raw counts in "
        "X_int get our transform log(max(x, 0) + 1) once (the reference applies log(x + 1) at load "
        "time); table sizes are the file's counts.",
    )
    nz.add_argument("src", metavar="FILE", help="the *_processed.npz file")
    nz.add_argument("out", metavar="OUT", help="output dataset directory")
    nz.add_argument(
        "--day-count",
        default=None,
        metavar="FILE",
        help="<raw>_day_count.npz with total_per_file (default: the one *_day_count.npz beside FILE)",
    )
    nz.add_argument(
        "--max-ind-range",
        type=positive_int,
        default=None,
        metavar="N",
        help="as the reference's flag: ids modulo N, tables capped at N (default: ids as they are)",
    )

    bn = sub.add_parser(
        "from-dlrm-bin",
        help="reference DLRM terabyte_processed_{train,val,test}.bin (40 int32 per row) -> parquet "
        "(dense logged once here)",
        description="Convert facebookresearch/dlrm's data_loader_terabyte.py binary files: <prefix>_train.bin, "
        "_val.bin, _test.bin (or train_data.bin, ...), each a run of records of 40 little-endian int32 "
        "(label, 13 raw dense counts, 26 ids). Each file becomes the split it names. Dense values get "
        "log(max(x, 0) + 1) once (the reference applies log(x + 1) at load time).",
    )
    bn.add_argument("src", metavar="DIR", help="directory holding the .bin files")
    bn.add_argument("out", metavar="OUT", help="output dataset directory")
    bn.add_argument(
        "--counts",
        default=None,
        metavar="FILE",
        help="<raw>_fea_count.npz with the ids per feature (default: the one *_fea_count.npz in DIR, else max id + 1)",
    )
    bn.add_argument(
        "--max-ind-range",
        type=positive_int,
        default=None,
        metavar="N",
        help="as the reference's flag: ids modulo N, tables capped at N (default: ids as they are)",
    )
    return [ml, nz, bn]


def run_foreign(args: argparse.Namespace, cfg: PrepConfig) -> PrepResult:
    if args.command == "from-mlperf-multihot":
        sizes = None if args.table_sizes is None else parse_table_sizes(args.table_sizes)
        return prepare_mlperf_multihot(
            args.src, args.out, cfg, dense_labels=args.dense_labels, table_sizes=sizes, max_bag=args.max_bag
        )
    if args.command == "from-dlrm-npz":
        return prepare_dlrm_npz(args.src, args.out, cfg, day_count=args.day_count, max_ind_range=args.max_ind_range)
    if args.command == "from-dlrm-bin":
        return prepare_dlrm_bin(args.src, args.out, cfg, counts=args.counts, max_ind_range=args.max_ind_range)
    raise ValueError(f"unknown command {args.command}")
