"""Streaming, rank-sliced batches from a prepared parquet dataset (data_prep/FORMAT.md).

Distributed contract: a split's rows, in file order, are cut into *global* batches
of local_batch_size * world_size consecutive rows and rank r takes rows
[r * B, (r + 1) * B) of each. So N ranks with batch B see exactly what one process
with batch N * B sees, and every rank yields the same number of batches (a rank
that stopped early would hang the others in the next collective).

Every rank reads (and validates) whole global batches, so a bad id raises on all
ranks at the same step instead of on one rank while the others block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_prep.dataset_format import read_meta
from mlet_dist.errors import DatasetError

PathLike = Union[str, Path]
# Lower bound on rows per parquet read, so tiny batches don't mean tiny reads.
_MIN_READ_ROWS = 8192


@dataclass(frozen=True)
class DatasetMeta:
    """The parts of meta.json the training side needs, with absolute file paths."""

    data_dir: Path
    label: str
    dense_features: Tuple[str, ...]
    sparse_features: Tuple[str, ...]
    table_sizes: Dict[str, int]
    split_rows: Dict[str, int]
    split_files: Dict[str, Tuple[Path, ...]]
    rows_read: Optional[int] = None  # input lines; rows_read = rows_rejected + sum(split_rows)
    rows_rejected: Optional[int] = None

    @classmethod
    def load(cls, data_dir: PathLike) -> "DatasetMeta":
        root = Path(data_dir)
        try:
            meta = read_meta(root)
        except (FileNotFoundError, ValueError) as err:
            raise DatasetError(str(err)) from err
        if not root.is_dir():  # a meta.json path was given
            root = root.parent
        return cls(
            data_dir=root,
            label=meta["label"],
            dense_features=tuple(meta["dense_features"]),
            sparse_features=tuple(meta["sparse_features"]),
            table_sizes={f: int(meta["table_sizes"][f]) for f in meta["sparse_features"]},
            split_rows={s: int(info["rows"]) for s, info in meta["splits"].items()},
            split_files={s: tuple(root / f for f in info["files"]) for s, info in meta["splits"].items()},
            rows_read=meta.get("rows_read"),
            rows_rejected=meta.get("rows_rejected"),
        )

    @property
    def columns(self) -> List[str]:
        return [self.label, *self.dense_features, *self.sparse_features]


@dataclass
class LoadedBatch:
    batch: Batch  # dense [B, num_dense] f32, sparse KJT (one id per sample and feature), labels [B] f32
    num_valid: int  # leading rows of this local batch that are real; the rest is padding


class ParquetBatchStream:
    """Iterable of LoadedBatch for one rank of one split; re-iterable (one pass per epoch).

    drop_last=True (training) drops the final incomplete global batch. drop_last=False
    (evaluation) pads it to full size by repeating the split's first row; use
    `num_valid` to mask padding out of metrics. `max_batches` caps the batch count.
    """

    def __init__(
        self,
        data_dir: PathLike,
        split: str,
        local_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        max_batches: Optional[int] = None,
    ) -> None:
        _check_args(local_batch_size, rank, world_size, max_batches)
        self.meta = DatasetMeta.load(data_dir)
        if split not in self.meta.split_files:
            raise DatasetError(f"unknown split {split!r}; dataset has {sorted(self.meta.split_files)}")
        self.split = split
        self.local_batch_size = local_batch_size
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.files = self.meta.split_files[split]
        self.num_rows = _check_files(self.files, self.meta.columns, self.meta.split_rows[split])

    # Feature metadata for model construction.
    @property
    def feature_names(self) -> List[str]:
        return list(self.meta.sparse_features)

    @property
    def dense_feature_names(self) -> List[str]:
        return list(self.meta.dense_features)

    @property
    def table_sizes(self) -> Dict[str, int]:
        return dict(self.meta.table_sizes)

    @property
    def num_dense(self) -> int:
        return len(self.meta.dense_features)

    @property
    def global_batch_size(self) -> int:
        return self.local_batch_size * self.world_size

    def __len__(self) -> int:
        full, rest = divmod(self.num_rows, self.global_batch_size)
        n = full + (1 if rest and not self.drop_last else 0)
        return n if self.max_batches is None else min(n, self.max_batches)

    def __iter__(self) -> Iterator[LoadedBatch]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[LoadedBatch]:
        """Batches ``start_batch``, ``start_batch + 1``, ...: resuming mid-epoch. Skipped batches
        are read (and validated) but not converted to tensors."""
        total = len(self)
        if not 0 <= start_batch <= total:
            raise ValueError(f"start_batch {start_batch} outside [0, {total}]")
        if total == start_batch:
            return
        first_row: Optional[pa.Table] = None
        produced = 0
        for global_batch in self._global_batches():
            if first_row is None:
                first_row = global_batch.slice(0, 1)
            if produced >= start_batch:
                yield self._local_batch(global_batch, first_row)
            produced += 1
            if produced == total:
                return  # stop before reading rows nobody will use

    # -- internals -----------------------------------------------------------

    def _global_batches(self) -> Iterator[pa.Table]:
        """Consecutive G-row tables across files; a final short one only if not drop_last."""
        size = self.global_batch_size
        buffer: List[pa.RecordBatch] = []
        buffered = 0
        for _path, batch in self._record_batches():
            buffer.append(batch)
            buffered += batch.num_rows
            while buffered >= size:
                table = pa.Table.from_batches(buffer)
                yield table.slice(0, size)
                rest = table.slice(size)
                buffer, buffered = rest.to_batches(), rest.num_rows
        if buffered and not self.drop_last:
            yield pa.Table.from_batches(buffer)

    def _record_batches(self) -> Iterator[Tuple[Path, pa.RecordBatch]]:
        read_rows = max(self.global_batch_size, _MIN_READ_ROWS)
        columns = self.meta.columns
        for path in self.files:
            offset = 0
            with pq.ParquetFile(path) as pf:
                for batch in pf.iter_batches(batch_size=read_rows, columns=columns):
                    batch = batch.select(columns)  # fixed column order for concatenation
                    self._validate(batch, path, offset)
                    offset += batch.num_rows
                    yield path, batch

    def _validate(self, batch: pa.RecordBatch, path: Path, offset: int) -> None:
        """Reject nulls, out-of-range ids, non-finite dense values and labels other than 0/1 here,
        so the embedding kernel never sees a bad id and the loss never sees NaN from the data."""
        rows = f"rows {offset}..{offset + batch.num_rows}"
        for name in batch.schema.names:
            if batch.column(name).null_count:
                raise DatasetError(f"{path}: column {name!r} has nulls ({rows})")
        for name in self.meta.sparse_features:
            _check_ids(batch.column(name), name, self.meta.table_sizes[name], path, offset)
        for name in self.meta.dense_features:
            col = batch.column(name)
            if pa.types.is_floating(col.type) and len(col) and not pc.all(pc.is_finite(col)).as_py():
                raise DatasetError(f"{path}: dense feature {name!r} has NaN or infinite values ({rows})")
        label = batch.column(self.meta.label)
        if len(label) and not pc.all(pc.is_in(label, value_set=pa.array([0, 1], type=label.type))).as_py():
            raise DatasetError(f"{path}: labels must be 0 or 1 ({rows})")

    def _local_batch(self, global_batch: pa.Table, first_row: pa.Table) -> LoadedBatch:
        size = self.local_batch_size
        local = global_batch.slice(self.rank * size, size)
        num_valid = local.num_rows
        if num_valid < size:
            padding = first_row.take(pa.array(np.zeros(size - num_valid, dtype=np.int64)))
            local = pa.concat_tables([local, padding])
        return LoadedBatch(batch=self._to_batch(local), num_valid=num_valid)

    def _to_batch(self, table: pa.Table) -> Batch:
        m = self.meta
        dense = np.stack([_col(table, n) for n in m.dense_features], axis=1).astype(np.float32, copy=False)
        labels = _col(table, m.label).astype(np.float32)
        values = np.concatenate([_col(table, n).astype(np.int64, copy=False) for n in m.sparse_features])
        lengths = torch.ones(len(m.sparse_features) * table.num_rows, dtype=torch.int32)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=list(m.sparse_features), values=torch.from_numpy(values), lengths=lengths
        )
        return Batch(
            dense_features=torch.from_numpy(np.ascontiguousarray(dense)),
            sparse_features=kjt,
            labels=torch.from_numpy(labels),
        )


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def _check_args(local_batch_size: int, rank: int, world_size: int, max_batches: Optional[int]) -> None:
    if local_batch_size < 1:
        raise ValueError(f"local_batch_size must be >= 1, got {local_batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    if max_batches is not None and max_batches < 0:
        raise ValueError(f"max_batches must be >= 0 or None, got {max_batches}")


def _check_files(files: Tuple[Path, ...], columns: List[str], expected_rows: int) -> int:
    """Open every footer once: fail at construction, not mid-epoch, on missing files/columns."""
    rows = 0
    for path in files:
        if not path.is_file():
            raise DatasetError(f"dataset part file not found: {path} (listed in meta.json); re-run mlet-prep")
        with pq.ParquetFile(path) as pf:
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise DatasetError(f"{path}: missing columns {missing}")
            rows += pf.metadata.num_rows
    if rows != expected_rows:
        raise DatasetError(f"split has {rows} rows in its files but meta.json says {expected_rows}")
    return rows


def _check_ids(col: Any, name: str, size: int, path: Path, offset: int) -> None:
    if len(col) == 0:
        return
    mm = pc.min_max(col)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    if lo >= 0 and hi < size:
        return
    ids = col.to_numpy(zero_copy_only=False)
    bad = int(np.flatnonzero((ids < 0) | (ids >= size))[0])
    raise DatasetError(
        f"feature {name!r}: id {int(ids[bad])} out of range [0, {size}) in {path} (row {offset + bad} of the file)"
    )
