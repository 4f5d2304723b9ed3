"""MLPerf DLRM-DCNv2 multi-hot Criteo -> our format v2 (`mlet-prep from-mlperf-multihot DIR OUT`).

The layout, as read in facebookresearch/dlrm at 090956ee (torchrec_dlrm/scripts/
materialize_synthetic_multihot_dataset.py writes it, torchrec_dlrm/data/multi_hot_criteo.py reads
it): per day ``day_N_sparse_multi_hot.npz``, written by ``np.savez`` (stored, not compressed)
with members ``"0"`` .. ``"25"``, member j an int32 array [rows, multi_hot_sizes[j]]: every row
of feature j is a bag of exactly that many ids (the one-hot id first, the rest drawn), already
reduced modulo ``num_embeddings_per_feature[j]``. Next to it ``day_N_dense.npy`` (float32
[rows, 13], torchrec's transform ``log(x - min + 2)``) and ``day_N_labels.npy`` (int32
[rows, 1]), copied there by ``--copy_labels_and_dense`` or left in torchrec's .npy directory
(``--dense-labels DIR``). The reader trains on days 0..N-2 and halves the last day: val the first
``ceil(rows / 2)`` rows, test the rest; so does this converter.

Values are copied: dense features are **not** transformed again; ids keep their values. A
feature of bag size 1 becomes an int64 column, a larger one a list<int64> column with
``multi_hot[C]`` = its bag size (pooling sum, as the MLPerf model pools). ``table_sizes`` =
max id + 1, or ``--table-sizes`` (the MLPerf run's ``num_embeddings_per_feature``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa

from data_prep.dataset_format import CRITEO_DENSE_FEATURES, CRITEO_SPARSE_FEATURES, parquet_schema
from data_prep.convert.common import (
    bag_column,
    checked_dense,
    checked_ids,
    day_blocks,
    first_bad,
    load_npy,
    npz_arrays,
    table_sizes_from,
    write_converted,
)
from data_prep.spec import PrepConfig, PrepResult

PathLike = Union[str, Path]
DATASET = "mlperf-multihot"
BLOCK_ROWS = 1 << 16
_DAY = re.compile(r"day_(\d+)_sparse_multi_hot\.npz$")
_FEATURES = CRITEO_SPARSE_FEATURES


@dataclasses.dataclass
class Day:
    """One day's three files, opened (arrays memory-mapped)."""

    number: int
    sparse_path: Path
    dense_path: Path
    labels_path: Path
    bags: List[np.ndarray]  # per feature [rows, bag size]
    dense: np.ndarray
    labels: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.labels)


def _open_day(n: int, src: Path, dense_dir: Path) -> Day:
    sparse_path = src / f"day_{n}_sparse_multi_hot.npz"
    dense_path, labels_path = dense_dir / f"day_{n}_dense.npy", dense_dir / f"day_{n}_labels.npy"
    for p in (dense_path, labels_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} is missing (day {n} has {sparse_path.name}; the materializing script "
                "copies dense and labels only with --copy_labels_and_dense: see --dense-labels)"
            )
    members = npz_arrays(sparse_path)
    missing = [str(j) for j in range(len(_FEATURES)) if str(j) not in members]
    if missing or len(members) != len(_FEATURES):
        raise ValueError(
            f"{sparse_path}: members {sorted(members, key=str)} where 0..{len(_FEATURES) - 1} were expected "
            f"(one [rows, bag size] array per Criteo feature)"
        )
    bags = [members[str(j)] for j in range(len(_FEATURES))]
    dense, labels = load_npy(dense_path), load_npy(labels_path)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if dense.ndim != 2 or dense.shape[1] != len(CRITEO_DENSE_FEATURES) or not np.issubdtype(dense.dtype, np.floating):
        raise ValueError(f"{dense_path}: shape {dense.shape} dtype {dense.dtype}, expected [rows, 13] of floats")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.number):
        raise ValueError(f"{labels_path}: shape {labels.shape}, expected [rows] or [rows, 1] of numbers")
    for j, b in enumerate(bags):
        if b.ndim != 2 or b.shape[1] < 1 or not np.issubdtype(b.dtype, np.integer):
            raise ValueError(
                f"{sparse_path}: member '{j}' ({_FEATURES[j]}) has shape {b.shape} dtype {b.dtype}, "
                "expected integer ids [rows, bag size]"
            )
        if len(b) != len(labels):
            raise ValueError(
                f"day {n}: rows differ: {sparse_path.name} member '{j}' {len(b)}, {labels_path.name} {len(labels)}"
            )
    if len(dense) != len(labels):
        raise ValueError(f"day {n}: rows differ: {dense_path.name} {len(dense)}, {labels_path.name} {len(labels)}")
    return Day(n, sparse_path, dense_path, labels_path, bags, dense, labels)


def find_days(src: Path, dense_dir: Optional[Path] = None) -> List[Day]:
    """Every ``day_N_sparse_multi_hot.npz`` in ``src`` by N, with its dense and labels files."""
    if not src.is_dir():
        raise FileNotFoundError(f"not a directory of MLPerf multi-hot day files: {src}")
    numbers = sorted(int(m.group(1)) for p in src.iterdir() if (m := _DAY.match(p.name)))
    if not numbers:
        raise ValueError(
            f"{src}: no day_N_sparse_multi_hot.npz files (materialize_synthetic_multihot_dataset.py writes them)"
        )
    return [_open_day(n, src, dense_dir or src) for n in numbers]


def _bag_sizes(days: List[Day], max_bag: Optional[int]) -> List[int]:
    sizes = [b.shape[1] for b in days[0].bags]
    for day in days[1:]:
        for j, b in enumerate(day.bags):
            if b.shape[1] != sizes[j]:
                raise ValueError(
                    f"{day.sparse_path}: {_FEATURES[j]} has bags of {b.shape[1]} ids, "
                    f"{days[0].sparse_path.name} of {sizes[j]} (one multi-hot size per feature)"
                )
    if max_bag is not None:
        for j, k in enumerate(sizes):
            if k > max_bag:
                raise ValueError(
                    f"{days[0].sparse_path}: row 0: {_FEATURES[j]} bag of {k} ids is longer than --max-bag {max_bag}"
                )
    return sizes


def _member_label(j: int, _bag_column: int) -> str:
    """Member j of a day's sparse .npz holds one feature's bags: a bad id names that feature, not its bag slot."""
    return f"{_FEATURES[j]} (member '{j}')"


def _scan(day: Day, lo: int, hi: int) -> np.ndarray:
    """Validate rows [lo, hi) of a day; the per-feature max ids."""
    labels = np.asarray(day.labels[lo:hi])
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        row = first_bad(bad)
        raise ValueError(f"{day.labels_path}: row {lo + row}: label {labels[row].item()} is not 0 or 1")
    checked_dense(day.dense[lo:hi], day.dense_path, lo)
    max_ids = np.full(len(_FEATURES), -1, np.int64)
    for j, bags in enumerate(day.bags):
        ids = checked_ids(bags[lo:hi], day.sparse_path, lo, functools.partial(_member_label, j))
        if ids.size:
            max_ids[j] = ids.max()
    return max_ids


def _blocks(days: List[Day], schema: pa.Schema, sizes: List[int]) -> Iterator[Tuple[str, pa.Table]]:
    def table(i: int, lo: int, hi: int) -> pa.Table:
        day = days[i]
        cols = [pa.array(np.asarray(day.labels[lo:hi]).astype(np.int8))]
        dense = np.asarray(day.dense[lo:hi], np.float32)
        cols += [pa.array(dense[:, j]) for j in range(dense.shape[1])]
        for bags, k in zip(day.bags, sizes):
            ids = np.asarray(bags[lo:hi])
            cols.append(pa.array(ids[:, 0].astype(np.int64)) if k == 1 else bag_column(ids))
        return pa.Table.from_arrays(cols, schema=schema)

    return day_blocks([d.rows for d in days], BLOCK_ROWS, table)


def prepare_mlperf_multihot(
    src: PathLike,
    out: PathLike,
    config: Optional[PrepConfig] = None,
    dense_labels: Optional[PathLike] = None,
    table_sizes: Optional[Sequence[int]] = None,
    max_bag: Optional[int] = None,
    **overrides: Any,
) -> PrepResult:
    """Convert a directory of MLPerf multi-hot day files into a prepared dataset (FORMAT.md)."""
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    days = find_days(Path(src), Path(dense_labels) if dense_labels is not None else None)
    sizes = _bag_sizes(days, max_bag)
    max_ids = np.full(len(_FEATURES), -1, np.int64)
    for day in days:  # check everything before writing anything
        for lo in range(0, day.rows, BLOCK_ROWS):
            max_ids = np.maximum(max_ids, _scan(day, lo, min(lo + BLOCK_ROWS, day.rows)))
    tables = table_sizes_from(_FEATURES, max_ids, table_sizes, "the .npz files")
    multi_hot: Dict[str, int] = {f: k for f, k in zip(_FEATURES, sizes) if k > 1}
    schema = parquet_schema(multi_hot=tuple(multi_hot))
    names = [f"day_{d.number}" for d in days]
    return write_converted(
        Path(out),
        cfg,
        schema,
        _blocks(days, schema, sizes),
        dataset=DATASET,
        sources=names,
        rows_per_source={n: d.rows for n, d in zip(names, days)},
        dense=CRITEO_DENSE_FEATURES,
        sparse=_FEATURES,
        table_sizes=tables,
        multi_hot=multi_hot,
        split={"method": "days", "train_files": len(days) - 1, "val_test": "last day halved (val: first ceil(rows/2))"},
        dense_transform="TorchRec's, as in day_N_dense.npy (log(x - min + 2)); not transformed again",
        sparse_transform="bags as in day_N_sparse_multi_hot.npz (fixed size per feature; size-1 features single-hot); "
        "table_sizes = max id + 1 unless given",
    )
