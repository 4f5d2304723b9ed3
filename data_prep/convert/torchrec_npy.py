"""TorchRec's preprocessed Criteo .npy files -> our format (`mlet-prep torchrec-npy DIR OUT`).

torchrec's Criteo scripts (``torchrec/datasets/scripts/npy_preproc_criteo.py``, which calls
``BinaryCriteoUtils.tsv_to_npys``) leave per day ``day_N_dense.npy`` (float32 [rows, 13], already
transformed: log of the counts shifted by their minimum), ``day_N_sparse.npy`` (int [rows, 26])
and ``day_N_labels.npy`` (int [rows, 1]); for Kaggle (``--dataset_name criteo_kaggle``) one
``train_{dense,sparse,labels}.npy`` (and an unlabelled ``test_*``, labels -1, not read here).

Ids: ``tsv_to_npys`` keeps the **raw** 32-bit hex values; TorchRec hashes them only when it
loads a batch (``InMemoryBinaryCriteoIterDataPipe(hashes=...)``: ``sparse %= hashes``, with its
``--num_embeddings`` or ``--num_embeddings_per_feature``). ``--max-ind-range N`` and
``--num-embeddings-per-feature`` do the same modulo here and make the tables those sizes. Without
them ids are copied (files ``contiguous_preproc_criteo.py`` already made contiguous) and
``table_sizes`` are max id + 1, or ``--table-sizes`` after checking every id fits; raw ids (a
table beyond MAX_TABLE_ROWS, or ids beyond the given sizes) are refused with a hint naming the
hashing flags.

Splits: day files as Criteo Terabyte and TorchRec's reader: all days but the last are train, the
last is halved into val (first ceil(rows/2)) and test. Kaggle mode: TorchRec's Kaggle loader
trains on the whole ``train_*.npy`` and evaluates on its second half (the reader's stage "test"),
so its train and eval rows overlap, which disjoint splits cannot repeat. The file is cut instead
as ``mlet-prep criteo-kaggle`` and the reference DLRM cut the same train.txt (7 chunks, the last
one test first, val second), so one TSV gives the same splits whichever command prepared it.

Dense values are copied, **not** transformed again (meta.json ``dense_transform`` says so).
Files load memory-mapped and never with pickle. A bad file (missing or not a regular file, wrong
shape, rows that differ between a day's three files, a label other than 0/1, a dense value not
finite as float32, a negative id or one that does not fit) stops the conversion with one line
naming the file and row; nothing is published.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa

from data_prep.dataset_format import CRITEO_DENSE_FEATURES, CRITEO_SPARSE_FEATURES, parquet_schema
from data_prep.convert.common import (
    checked_dense,
    checked_ids,
    day_blocks,
    first_bad,
    load_npy,
    range_blocks,
    table_sizes_from,
    write_converted,
)
from data_prep.spec import PrepConfig, PrepResult
from data_prep.staging import check_output
from data_prep.splits import chunk_split_bounds

PathLike = Union[str, Path]
DATASET = "torchrec-npy"
BLOCK_ROWS = 1 << 17
_DAY = re.compile(r"day_(\d+)_labels\.npy$")
KAGGLE = "train"  # npy_preproc_criteo.py --dataset_name criteo_kaggle: train_{dense,sparse,labels}.npy
HASH_HINT = (
    "raw ids? TorchRec's tsv_to_npys keeps the 32-bit values and its reader hashes them at load time: "
    "pass --max-ind-range N or --num-embeddings-per-feature N,... as given to it"
)


@dataclasses.dataclass(frozen=True)
class Day:
    """One source's three files: ``day_N`` or Kaggle mode's ``train``."""

    name: str
    dense: Path
    sparse: Path
    labels: Path


def _source(src: Path, name: str) -> Day:
    return Day(name, *(src / f"{name}_{part}.npy" for part in ("dense", "sparse", "labels")))


def find_days(src: Path) -> List[Day]:
    """Every ``day_N`` in ``src`` with its three files, by N; or Kaggle mode's ``train`` files."""
    if not src.is_dir():
        raise FileNotFoundError(f"not a directory of TorchRec day files: {src}")
    numbers = sorted(int(m.group(1)) for p in src.iterdir() if (m := _DAY.match(p.name)))
    kaggle = (src / f"{KAGGLE}_labels.npy").exists()
    if numbers and kaggle:
        raise ValueError(f"{src}: both day_N_*.npy and {KAGGLE}_*.npy (Kaggle mode); keep one layout per directory")
    if not numbers and not kaggle:
        raise ValueError(
            f"{src}: no day_N_labels.npy files (expected day_N_{{dense,sparse,labels}}.npy, or "
            f"{KAGGLE}_{{dense,sparse,labels}}.npy from npy_preproc_criteo.py --dataset_name criteo_kaggle)"
        )
    days = [_source(src, f"day_{n}") for n in numbers] if numbers else [_source(src, KAGGLE)]
    for day in days:
        for path in (day.dense, day.sparse):
            if not path.exists() and not path.is_symlink():
                raise FileNotFoundError(f"{path} is missing ({day.name} has {day.labels.name})")
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
        raise ValueError(
            f"{day.name}: rows differ: {day.dense.name} {len(dense)}, {day.sparse.name} "
            f"{len(sparse)}, {day.labels.name} {len(labels)}"
        )
    return dense, sparse, labels


def _ids(day: Day, start: int, sparse: np.ndarray, hashes: Optional[np.ndarray]) -> np.ndarray:
    """A block's ids as stored: checked in the file's dtype, then modulo ``hashes`` as TorchRec's
    reader does (``sparse %= hashes``)."""
    ids = checked_ids(sparse, day.sparse, start, CRITEO_SPARSE_FEATURES.__getitem__)
    return ids % hashes if hashes is not None else ids


def _scan(
    day: Day, start: int, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray, hashes: Optional[np.ndarray]
) -> np.ndarray:
    """Validate one block (rows from ``start``); its per-feature max ids (after hashing)."""
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        row = first_bad(bad)
        raise ValueError(f"{day.labels}: row {start + row}: label {labels[row].item()} is not 0 or 1")
    checked_dense(dense, day.dense, start)
    ids = _ids(day, start, sparse, hashes)
    return ids.max(axis=0) if len(ids) else np.full(ids.shape[1], -1)


def hash_sizes(
    max_ind_range: Optional[int], per_feature: Optional[Sequence[int]], table_sizes: Optional[Sequence[int]]
) -> Optional[np.ndarray]:
    """TorchRec's ``hashes``: one N for every feature, or one per feature; None: no hashing."""
    given = [
        flag
        for flag, v in (
            ("--max-ind-range", max_ind_range),
            ("--num-embeddings-per-feature", per_feature),
            ("--table-sizes", table_sizes),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} both set the table sizes; give one")
    if per_feature is not None and len(per_feature) != len(CRITEO_SPARSE_FEATURES):
        raise ValueError(
            f"--num-embeddings-per-feature needs {len(CRITEO_SPARSE_FEATURES)} sizes, got {len(per_feature)}"
        )
    if max_ind_range is not None:
        per_feature = [max_ind_range] * len(CRITEO_SPARSE_FEATURES)
    return None if per_feature is None else np.asarray(per_feature, np.int64)


def prepare_torchrec_npy(
    src: PathLike,
    out: PathLike,
    config: Optional[PrepConfig] = None,
    table_sizes: Optional[Sequence[int]] = None,
    max_ind_range: Optional[int] = None,
    num_embeddings_per_feature: Optional[Sequence[int]] = None,
    **overrides: Any,
) -> PrepResult:
    """Convert a directory of TorchRec .npy files into a prepared dataset (FORMAT.md)."""
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    hashes = hash_sizes(max_ind_range, num_embeddings_per_feature, table_sizes)
    days = find_days(Path(src))
    out_path = Path(out)
    check_output(out_path, cfg.overwrite)
    opened = [_open_day(d) for d in days]
    max_ids = np.full(len(CRITEO_SPARSE_FEATURES), -1, np.int64)
    for day, (dense, sparse, labels) in zip(days, opened):
        for lo in range(0, len(labels), BLOCK_ROWS):
            hi = lo + BLOCK_ROWS
            max_ids = np.maximum(max_ids, _scan(day, lo, dense[lo:hi], sparse[lo:hi], labels[lo:hi], hashes))
    given = list(hashes) if hashes is not None else table_sizes
    sizes = table_sizes_from(CRITEO_SPARSE_FEATURES, max_ids, given, "the .npy files", HASH_HINT)
    schema = parquet_schema()
    names = [d.name for d in days]
    rows = [len(labels) for _, _, labels in opened]
    hashed = "" if hashes is None else " modulo the table sizes, as TorchRec's reader hashes them (sparse %= hashes)"
    return write_converted(
        out_path,
        cfg,
        schema,
        _blocks(days, opened, schema, hashes),
        dataset=DATASET,
        sources=names,
        source_unit="days",
        rows_per_source=dict(zip(names, rows)),
        dense=CRITEO_DENSE_FEATURES,
        sparse=CRITEO_SPARSE_FEATURES,
        table_sizes=sizes,
        split=_split_meta(days, rows),
        dense_transform="TorchRec's, as in the .npy files (log of the shifted counts); not transformed again",
        sparse_transform=f"ids as in the .npy files{hashed}; table_sizes = "
        + (
            "--max-ind-range / --num-embeddings-per-feature"
            if hashes is not None
            else "--table-sizes"
            if table_sizes is not None
            else "max id + 1"
        ),
    )


def _split_meta(days: List[Day], rows: List[int]) -> Dict[str, Any]:
    if days[0].name != KAGGLE:
        return {"method": "days", "train_files": len(days) - 1, "val_test": "last file halved"}
    return {
        "method": "dlrm-7-chunks",
        "chunks": 7,
        "layout": "torchrec kaggle train_*.npy",
        "bounds": {s: list(b) for s, b in chunk_split_bounds(rows[0]).items()},
    }


def _blocks(
    days: List[Day],
    opened: List[Tuple[np.ndarray, np.ndarray, np.ndarray]],
    schema: pa.Schema,
    hashes: Optional[np.ndarray],
) -> Iterator[Tuple[str, pa.Table]]:
    """(split, table) blocks in file order: days split as TorchRec's reader, Kaggle mode as criteo-kaggle."""

    def table(i: int, lo: int, hi: int) -> pa.Table:
        dense, sparse, labels = opened[i]
        ids = _ids(days[i], lo, sparse[lo:hi], hashes)
        cols = [pa.array(np.asarray(labels[lo:hi]).astype(np.int8))]
        cols += [pa.array(np.asarray(dense[lo:hi, j], np.float32)) for j in range(dense.shape[1])]
        cols += [pa.array(ids[:, j]) for j in range(ids.shape[1])]
        return pa.Table.from_arrays(cols, schema=schema)

    rows = [len(labels) for _, _, labels in opened]
    if days[0].name == KAGGLE:
        return range_blocks(chunk_split_bounds(rows[0]), BLOCK_ROWS, lambda lo, hi: table(0, lo, hi))
    return day_blocks(rows, BLOCK_ROWS, table)
