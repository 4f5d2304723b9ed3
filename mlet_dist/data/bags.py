"""Sparse columns as bags of ids: one int64 id per row (single-hot) or a list<int64> bag per row
(multi-hot, possibly empty). Shared by the training reader and the serving reader so that both
build the same KeyedJaggedTensor from the same column and reject the same bad bags."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mlet_dist.errors import DatasetError


def is_bag_column(col: pa.ChunkedArray | pa.Array) -> bool:
    """A multi-hot (list) column, as opposed to one id per row."""
    return pa.types.is_list(col.type) or pa.types.is_large_list(col.type)


def check_column_type(col: pa.ChunkedArray | pa.Array, name: str, multi_hot: bool, where: str) -> None:
    """The column's physical type must match meta.json: list<int> for a multi_hot feature, int else."""
    if multi_hot and not (is_bag_column(col) and pa.types.is_integer(col.type.value_type)):
        raise DatasetError(f"{where}: feature {name!r} is multi_hot in meta.json but its column is {col.type}")
    if not multi_hot and not pa.types.is_integer(col.type):
        raise DatasetError(
            f"{where}: feature {name!r} has a {col.type} column but meta.json does not list it in multi_hot"
        )


def bag_arrays(col: pa.ChunkedArray | pa.Array) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(ids as int64, bag lengths as int32 or None for one id per row), honouring slices."""
    if not is_bag_column(col):
        return col.to_numpy().astype(np.int64, copy=False), None
    values = pc.list_flatten(col)
    lengths = pc.list_value_length(col)
    return (
        np.asarray(values.to_numpy(), dtype=np.int64),
        np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int32),
    )


def check_bags(
    col: pa.ChunkedArray | pa.Array,
    name: str,
    size: int,
    max_bag: Optional[int],
    where: str,
) -> None:
    """Ids within [0, size), no null bag or null id, no bag longer than ``max_bag``: one line that
    names the feature, the row group and the row, never an out-of-range id in a kernel."""
    if is_bag_column(col):
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DatasetError(f"{where}: feature {name!r} has a null bag at row {row} of the row group")
        lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False), dtype=np.int64)
        if max_bag is not None and len(lengths) and int(lengths.max()) > max_bag:
            row = int(np.argmax(lengths > max_bag))
            raise DatasetError(
                f"{where}: feature {name!r} has a bag of {int(lengths[row])} ids at row {row} of the row group, "
                f"longer than its stated maximum {max_bag} (meta.json multi_hot)"
            )
        values = pc.list_flatten(col)
        if values.null_count:
            raise DatasetError(f"{where}: feature {name!r} has a null id inside a bag")
        row_of = np.repeat(np.arange(len(lengths)), lengths)
    else:
        values, row_of = col, None
    if len(values) == 0:
        return
    mm = pc.min_max(values)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    if lo >= 0 and hi < size:
        return
    ids = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values, dtype=np.int64)
    bad = int(np.flatnonzero((ids < 0) | (ids >= size))[0])
    row = bad if row_of is None else int(row_of[bad])
    raise DatasetError(
        f"feature {name!r}: id {int(ids[bad])} out of range [0, {size}) in {where}, row {row} of the row group"
    )


def build_kjt(
    columns: Sequence[pa.ChunkedArray | pa.Array],
    keys: Sequence[str],
    rows: int,
    ones: Optional[torch.Tensor] = None,
) -> KeyedJaggedTensor:
    """A KJT (feature-major) with the real bag lengths. All single-hot: lengths are ``ones``
    (shared, read-only) and the per-key sizes are known, so no reduction runs per batch."""
    parts = [bag_arrays(c) for c in columns]
    values = np.concatenate([v for v, _ in parts]) if parts else np.zeros(0, np.int64)
    if all(lengths is None for _, lengths in parts):
        features = len(keys)
        if ones is None or ones.numel() != features * rows:
            ones = torch.ones(features * rows, dtype=torch.int32)
        return KeyedJaggedTensor(
            keys=list(keys),
            values=torch.from_numpy(values),
            lengths=ones,
            stride=rows,
            length_per_key=[rows] * features,
            offset_per_key=[rows * i for i in range(features + 1)],
        )
    lengths: List[np.ndarray] = [np.ones(rows, np.int32) if lens is None else lens for _, lens in parts]
    per_key = [int(len(v)) for v, _ in parts]
    return KeyedJaggedTensor(
        keys=list(keys),
        values=torch.from_numpy(values),
        lengths=torch.from_numpy(np.concatenate(lengths)),
        stride=rows,
        length_per_key=per_key,
        offset_per_key=[0, *np.cumsum(per_key).tolist()],
    )
