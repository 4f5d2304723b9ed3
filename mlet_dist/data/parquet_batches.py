"""Batches of one split for one rank, from a prepared parquet dataset (data_prep/FORMAT.md).

Two row orders, both with every rank yielding the same number of batches (a rank that stopped
early would hang the others in the next collective):

- ``order="local"`` (the default): rank r owns a contiguous 1/W of the split's rows and reads
  and decodes only those (plus the partial row groups at its two ends), so a cluster's input
  rate grows with its size. Evaluation splits are cut the same way and gathered rank-major,
  which is file order again.
- ``order="exact"``: the split is cut into *global* batches of local_batch_size * world_size
  consecutive rows and rank r takes rows [r * B, (r + 1) * B) of each, so N ranks with batch B
  see exactly what one process with batch N * B sees. Every rank reads every row: the
  equivalence tests' order, not one for scale.

``shuffle=True`` permutes the row groups per epoch and the rows inside windows of
``shuffle_window`` rows, seeded by (seed, epoch): reproducible, and a resumed run lands on the
exact next batch. A run resumed on another world size, batch or order trains the rows the
interrupted epoch had left (``iter_from(..., plan=)``, epoch_plan.py). Batches are made ``prefetch`` ahead in a background thread.

Every row group is validated as it is decoded (nulls, ids within their table, finite dense
values, labels 0/1), and errors name the file and row group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.datasets.utils import Batch

from data_prep.dataset_format import feature_pooling, multi_hot_features, read_meta
from mlet_dist.data.bags import build_kjt, check_bags, check_column_type
from mlet_dist.data.epoch_plan import (
    ORDERS,
    Layout,
    Piece,
    Plan,
    data_record,
    fresh_plan,
    num_batches,
    plan_rows,
    rank_pieces,
    take,
)
from mlet_dist.data.prefetch import prefetch
from mlet_dist.data.row_groups import RowRangeReader, epoch_order, index_row_groups
from mlet_dist.errors import DatasetError

PathLike = Union[str, Path]
DEFAULT_SHUFFLE_WINDOW = 65_536


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
    pooling: Dict[str, str] = field(default_factory=dict)  # feature -> "sum" | "mean" (version 1: all sum)
    multi_hot: Dict[str, int] = field(default_factory=dict)  # list-column feature -> max bag size

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
            pooling=feature_pooling(meta),
            multi_hot=multi_hot_features(meta),
        )

    @property
    def columns(self) -> List[str]:
        return [self.label, *self.dense_features, *self.sparse_features]


@dataclass
class LoadedBatch:
    batch: Batch  # dense [B, num_dense] f32, sparse KJT (a bag of ids per sample and feature), labels [B] f32
    num_valid: int  # leading rows of this local batch that are real; the rest is padding


class ParquetBatchStream:
    """Iterable of LoadedBatch for one rank of one split; ``iter_from(batch, epoch)`` per epoch.

    drop_last=True (training) drops the rows that do not fill a batch on every rank.
    drop_last=False (evaluation) pads the last batches to full size by repeating the split's
    first row; use ``num_valid`` to mask padding out of metrics. ``max_batches`` caps a training
    epoch's batches, and an evaluation to the split's first ``max_batches`` x local batch size rows.
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
        order: str = "local",
        shuffle: bool = False,
        seed: int = 0,
        shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> None:
        _check_args(local_batch_size, rank, world_size, max_batches)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window must be >= 1, got {shuffle_window}")
        self.meta = DatasetMeta.load(data_dir)
        if split not in self.meta.split_files:
            raise DatasetError(f"unknown split {split!r}; dataset has {sorted(self.meta.split_files)}")
        self.split = split
        self.local_batch_size = local_batch_size
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.order = order
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_window = shuffle_window
        self.prefetch = prefetch
        self.pin_memory = pin_memory
        self.files = self.meta.split_files[split]
        self.row_groups = index_row_groups(self.files, self.meta.columns)
        self.num_rows = sum(g.rows for g in self.row_groups)
        if self.num_rows != self.meta.split_rows[split]:
            raise DatasetError(
                f"split has {self.num_rows} rows in its files but meta.json says {self.meta.split_rows[split]}"
            )
        self._first: Optional[pa.Table] = None
        self.decoded_rows = 0  # rows decoded by the latest pass (benchmarks, tests)
        self._ones: Optional[torch.Tensor] = None  # the lengths of single-id bags, shared read-only

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

    @property
    def rank_major(self) -> bool:
        """How gathered per-rank rows come back to file order: rank-major (local: each rank
        holds a contiguous block) or batch-major (exact: each global batch spans the ranks)."""
        return self.order == "local"

    def __len__(self) -> int:
        """Batches of a fresh epoch (training) or of the evaluated rows (evaluation)."""
        if self.drop_last:
            return num_batches(self.fresh_plan(), self.layout)
        return -(-self.eval_rows // self.global_batch_size)  # = ceil(ceil(N / W) / B) per rank

    @property
    def layout(self) -> Layout:
        return Layout(self.order, self.world_size, self.local_batch_size)

    @property
    def eval_rows(self) -> int:
        """Rows an evaluation pass scores: the split, or with ``max_batches`` its first
        ``max_batches`` x local batch size rows: one global prefix, the same at every world size."""
        if self.max_batches is None:
            return self.num_rows
        return min(self.num_rows, self.max_batches * self.local_batch_size)

    def fresh_plan(self) -> Plan:
        return fresh_plan(self.num_rows, self.layout, self.max_batches)

    def num_batches(self, plan: Optional[Plan] = None) -> int:
        """Batches of ``plan`` (a resumed epoch's rows, epoch_plan.py), or of a fresh epoch."""
        return len(self) if plan is None else num_batches(plan, self.layout)

    def data_record(self, plan: Optional[Plan]) -> Dict[str, Any]:
        """What a checkpoint keeps to find the rows an epoch running ``plan`` has left."""
        return data_record(
            self.layout, self.num_rows, self.shuffle, self.seed, self.shuffle_window, self.max_batches, plan
        )

    def __iter__(self) -> Iterator[LoadedBatch]:
        return self.iter_from(0)

    def rows_of_rank(self) -> Tuple[int, int]:
        """[lo, hi) of the split this rank evaluates (drop_last=False: file order, padded)."""
        rows = self.eval_rows
        if self.order == "exact":
            return 0, rows
        share = -(-rows // self.world_size)
        lo = min(self.rank * share, rows)
        return lo, min(lo + share, rows)

    def iter_from(self, start_batch: int, epoch: int = 0, plan: Optional[Plan] = None) -> Iterator[LoadedBatch]:
        """Batches ``start_batch``, ``start_batch + 1``, ... of ``epoch`` (of ``plan``, the rows a
        resumed epoch has left, when given): reads nothing before the window that holds the start."""
        total = self.num_batches(plan)
        if not 0 <= start_batch <= total:
            raise ValueError(f"start_batch {start_batch} outside [0, {total}]")
        if total == start_batch:
            return iter(())
        transform = (
            (lambda lb: LoadedBatch(lb.batch.pin_memory(), lb.num_valid)) if self.pin_memory else (lambda lb: lb)
        )
        return prefetch(lambda: self._batches(start_batch, epoch, total, plan), self.prefetch, transform)

    # -- internals -----------------------------------------------------------

    def _batches(self, start: int, epoch: int, total: int, plan: Optional[Plan]) -> Iterator[LoadedBatch]:
        order = epoch_order(self.row_groups, self.seed, epoch, self.shuffle)
        reader = RowRangeReader(order, self.meta.columns, self._validate)
        unit = self.global_batch_size if self.order == "exact" else self.local_batch_size
        if self.drop_last:
            mine = rank_pieces(self.fresh_plan() if plan is None else plan, self.layout, self.rank)
        else:
            lo, hi = self.rows_of_rank()
            mine = [Piece(lo, hi, 0, hi - lo)]
        seed = (self.seed, epoch) if self.shuffle else None
        produced = start
        pending: List[pa.Table] = []
        pending_rows = 0
        try:
            for window in reader.pieces(take(mine, start * unit, plan_rows(mine)), self.shuffle_window, seed):
                pending.append(window)
                pending_rows += window.num_rows
                while pending_rows >= unit and produced < total:
                    table = pa.concat_tables(pending)
                    yield self._local_batch(table.slice(0, unit))
                    produced += 1
                    rest = table.slice(unit)
                    pending, pending_rows = [rest], rest.num_rows
            while produced < total:  # evaluation: the short tail, then all-padding batches
                tail = pa.concat_tables(pending) if pending_rows else self._first_row().slice(0, 0)
                yield self._local_batch(tail)
                pending, pending_rows = [], 0
                produced += 1
        finally:
            self.decoded_rows = reader.decoded_rows
            reader.close()

    def _first_row(self) -> pa.Table:
        if self._first is None:
            reader = RowRangeReader(self.row_groups, self.meta.columns, self._validate)
            self._first = reader.read(0, 1)
            reader.close()
        return self._first

    def _validate(self, table: pa.Table, where: str) -> None:
        """Reject nulls, out-of-range ids, non-finite dense values and labels other than 0/1 here,
        so the embedding kernel never sees a bad id and the loss never sees NaN from the data."""
        for name in table.column_names:
            if table.column(name).null_count:
                raise DatasetError(f"{where}: column {name!r} has nulls")
        for name in self.meta.sparse_features:
            col = table.column(name)
            check_column_type(col, name, name in self.meta.multi_hot, where)
            _check_ids(col, name, self.meta.table_sizes[name], where, self.meta.multi_hot.get(name))
        for name in self.meta.dense_features:
            col = table.column(name)
            if pa.types.is_floating(col.type) and len(col) and not pc.all(pc.is_finite(col)).as_py():
                raise DatasetError(f"{where}: dense feature {name!r} has NaN or infinite values")
        label = table.column(self.meta.label)
        if len(label) and not pc.all(pc.is_in(label, value_set=pa.array([0, 1], type=label.type))).as_py():
            raise DatasetError(f"{where}: labels must be 0 or 1")

    def _local_batch(self, table: pa.Table) -> LoadedBatch:
        """This rank's batch from a global batch (exact) or its own rows (local), padded."""
        size = self.local_batch_size
        local = table.slice(self.rank * size, size) if self.order == "exact" else table
        num_valid = local.num_rows
        if num_valid < size:
            padding = self._first_row().take(pa.array(np.zeros(size - num_valid, dtype=np.int64)))
            local = pa.concat_tables([local, padding]) if num_valid else padding
        return LoadedBatch(batch=self._to_batch(local), num_valid=num_valid)

    def _to_batch(self, table: pa.Table) -> Batch:
        m = self.meta
        dense = np.stack([_col(table, n) for n in m.dense_features], axis=1).astype(np.float32, copy=False)
        labels = _col(table, m.label).astype(np.float32)
        rows = table.num_rows
        if not m.multi_hot and (self._ones is None or self._ones.numel() != len(m.sparse_features) * rows):
            self._ones = torch.ones(len(m.sparse_features) * rows, dtype=torch.int32)  # shared, read-only
        kjt = build_kjt([table.column(n) for n in m.sparse_features], m.sparse_features, rows, self._ones)
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


def _check_ids(col: Any, name: str, size: int, where: str, max_bag: Optional[int] = None) -> None:
    """Ids of a single-hot or multi-hot column within [0, size), bags no longer than ``max_bag``."""
    check_bags(col, name, size, max_bag, where)
