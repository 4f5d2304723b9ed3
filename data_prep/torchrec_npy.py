"""TorchRec's preprocessed Criteo day files -> our format (`mlet-prep torchrec-npy DIR OUT`).

torchrec's Criteo scripts (``torchrec/datasets/scripts/npy_preproc_criteo.py``) leave per day
``day_N_dense.npy`` (float32 [rows, 13], already transformed by TorchRec: log of the shifted
counts), ``day_N_sparse.npy`` (int [rows, 26], ids already contiguous or hashed) and
``day_N_labels.npy`` (int [rows] or [rows, 1]). Many people have Criteo only in that form.

The conversion copies values as they are: the dense features are **not** transformed again
(meta.json ``dense_transform`` says so), ids keep their values and ``table_sizes`` are max id + 1
per feature unless given. Days split like Criteo Terabyte: all but the last are train, the last
day is halved into val (first half, rounded up) and test. Files load memory-mapped and never
with pickle. A bad file (missing, wrong shape, rows that differ between a day's three files, a
label other than 0/1, a non-finite dense value, a negative id or one beyond a given table size)
stops the conversion with one line naming the file and row; nothing is published.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa

from data_prep.dataset_format import CRITEO_DENSE_FEATURES, CRITEO_SPARSE_FEATURES, parquet_schema
from data_prep.foreign_common import day_blocks, first_bad, load_npy, table_sizes_from, write_converted
from data_prep.pipeline import PrepConfig, PrepResult, check_output

PathLike = Union[str, Path]
DATASET = "torchrec-npy"
BLOCK_ROWS = 1 << 17
_DAY = re.compile(r"day_(\d+)_labels\.npy$")


@dataclasses.dataclass(frozen=True)
class Day:
    number: int
    dense: Path
    sparse: Path
    labels: Path


def find_days(src: Path) -> List[Day]:
    """Every ``day_N`` in ``src`` with its three files, by N."""
    if not src.is_dir():
        raise FileNotFoundError(f"not a directory of TorchRec day files: {src}")
    numbers = sorted(int(m.group(1)) for p in src.iterdir() if (m := _DAY.match(p.name)))
    if not numbers:
        raise ValueError(f"{src}: no day_N_labels.npy files (expected day_N_{{dense,sparse,labels}}.npy)")
    days = [Day(n, src / f"day_{n}_dense.npy", src / f"day_{n}_sparse.npy", src / f"day_{n}_labels.npy")
            for n in numbers]
    for day in days:
        for path in (day.dense, day.sparse):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (day {day.number} has {day.labels.name})")
    return days


def _open_day(day: Day) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    dense, sparse, labels = load_npy(day.dense), load_npy(day.sparse), load_npy(day.labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    checks = [
        (dense, day.dense, 2, len(CRITEO_DENSE_FEATURES), np.floating),
        (sparse, day.sparse, 2, len(CRITEO_SPARSE_FEATURES), np.integer),
        (labels, day.labels, 1, None, np.number),
    ]
    for arr, path, ndim, width, kind in checks:
        if arr.ndim != ndim or (width is not None and arr.shape[1] != width) or not np.issubdtype(arr.dtype, kind):
            want = f"[rows, {width}]" if width else "[rows] or [rows, 1]"
            raise ValueError(f"{path}: shape {arr.shape} dtype {arr.dtype}, expected {want} of {kind.__name__}")
    if not len(dense) == len(sparse) == len(labels):
        raise ValueError(f"day {day.number}: rows differ: {day.dense.name} {len(dense)}, {day.sparse.name} "
                         f"{len(sparse)}, {day.labels.name} {len(labels)}")
    return dense, sparse, labels


def _scan(day: Day, start: int, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Validate one block (rows from ``start``); its per-feature max ids."""
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        row = first_bad(bad)
        raise ValueError(f"{day.labels}: row {start + row}: label {labels[row].item()} is not 0 or 1")
    bad = ~np.isfinite(dense).all(axis=1)
    if bad.any():
        raise ValueError(f"{day.dense}: row {start + first_bad(bad)}: non-finite dense value")
    bad = (sparse < 0).any(axis=1)
    if bad.any():
        row = first_bad(bad)
        col = first_bad(sparse[row] < 0)
        raise ValueError(f"{day.sparse}: row {start + row}: negative id {sparse[row, col]} in {CRITEO_SPARSE_FEATURES[col]}")
    return sparse.max(axis=0) if len(sparse) else np.full(sparse.shape[1], -1)


def prepare_torchrec_npy(
    src: PathLike, out: PathLike, config: Optional[PrepConfig] = None,
    table_sizes: Optional[Sequence[int]] = None, **overrides: Any,
) -> PrepResult:
    """Convert a directory of TorchRec day files into a prepared dataset (FORMAT.md)."""
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    days = find_days(Path(src))
    out_path = Path(out)
    check_output(out_path, cfg.overwrite)
    opened = [_open_day(d) for d in days]
    max_ids = np.full(len(CRITEO_SPARSE_FEATURES), -1, np.int64)
    for day, (dense, sparse, labels) in zip(days, opened):
        for lo in range(0, len(labels), BLOCK_ROWS):
            hi = lo + BLOCK_ROWS
            max_ids = np.maximum(max_ids, _scan(day, lo, dense[lo:hi], sparse[lo:hi], labels[lo:hi]))
    sizes = table_sizes_from(CRITEO_SPARSE_FEATURES, max_ids, table_sizes, "the day files")
    rows_per_day = [len(labels) for _, _, labels in opened]
    schema = parquet_schema()
    names = [d.labels.name.replace("_labels.npy", "") for d in days]
    return write_converted(
        out_path, cfg, schema, _blocks(opened, schema), dataset=DATASET, sources=names, source_unit="days",
        rows_per_source=dict(zip(names, rows_per_day)), dense=CRITEO_DENSE_FEATURES, sparse=CRITEO_SPARSE_FEATURES,
        table_sizes=sizes, split={"method": "days", "train_files": len(days) - 1, "val_test": "last file halved"},
        dense_transform="TorchRec's, as in the .npy files (log of the shifted counts); not transformed again",
        sparse_transform="ids as in the .npy files; table_sizes = max id + 1 unless given",
    )


def _blocks(opened: List[Tuple[np.ndarray, np.ndarray, np.ndarray]], schema: pa.Schema) -> Iterator[Tuple[str, pa.Table]]:
    """(split, table) blocks in day order: all days but the last are train, the last is halved."""
    def table(i: int, lo: int, hi: int) -> pa.Table:
        dense, sparse, labels = opened[i]
        cols = [pa.array(np.asarray(labels[lo:hi]).astype(np.int8))]
        cols += [pa.array(np.asarray(dense[lo:hi, j], np.float32)) for j in range(dense.shape[1])]
        cols += [pa.array(np.asarray(sparse[lo:hi, j], np.int64)) for j in range(sparse.shape[1])]
        return pa.Table.from_arrays(cols, schema=schema)

    return day_blocks([len(labels) for _, _, labels in opened], BLOCK_ROWS, table)
