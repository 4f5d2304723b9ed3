"""A whole-dataset check before training, from the parquet footers alone (no data pages read).

Without it a bad id in the val split surfaces only at the first evaluation, a label of 7 trains
to rc 0, and a meta.json that lost a part file trains silently on less data. Every row group's
column statistics (min, max, null count) are in the footer, so checking every split costs
milliseconds however big the dataset is: ids within their table, labels 0/1, dense values
finite, no nulls, and row accounting against meta.json. NaN is the one thing parquet statistics
do not record; the batch reader rejects it as it reads (``parquet_batches.py``).

Multi-hot (list) columns: their statistics are those of the leaf values (``C1.list.element``), so
the id range is checked the same way, but the leaf's null count also counts empty bags, so nulls
and bag lengths are left to the batch reader, which sees the bags.
"""

import math
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from mlet_dist.data.bags import check_column_type, is_bag_column
from mlet_dist.data.parquet_batches import DatasetMeta
from mlet_dist.errors import DatasetError


def _leaf_index(md: Any, columns: Tuple[str, ...], where: str) -> Dict[str, int]:
    """Footer column index per top-level column: itself, or the leaf of a list column."""
    index: Dict[str, int] = {}
    for i in range(md.num_columns):
        path = md.schema.column(i).path
        top = path.split(".", 1)[0]
        if top in columns and (path == top or path in (f"{top}.list.element", f"{top}.list.item")):
            index[top] = i
    missing = [c for c in columns if c not in index]
    if missing:
        raise DatasetError(f"{where}: missing columns {missing} (or not int/list<int> columns)")
    return index


def _column_ranges(path: Path, columns: Tuple[str, ...]) -> Iterator[Tuple[str, int, Any, Any, int]]:
    """(column, row group, min, max, null count) per row group; min/max None where not recorded.
    For a list column: the range of its leaf values, null count None (empty bags count there)."""
    pf = pq.ParquetFile(path)
    md = pf.metadata
    index = _leaf_index(md, columns, str(path))
    nested = {c for c in columns if "." in md.schema.column(index[c]).path}
    for rg in range(md.num_row_groups):
        group = md.row_group(rg)
        for name in columns:
            stats = group.column(index[name]).statistics
            nulls = 0 if name in nested or stats is None else stats.null_count
            if stats is None or not stats.has_min_max:
                yield name, rg, None, None, nulls
            else:
                yield name, rg, stats.min, stats.max, nulls


def _unrecorded(path: Path, column: str) -> Tuple[Any, Any]:
    """min/max of a column whose footer has no statistics: read that one column."""
    import pyarrow.compute as pc

    try:
        values = pq.read_table(path, columns=[column], page_checksum_verification=True).column(column)
    except (OSError, pa.ArrowException) as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    if is_bag_column(values):
        values = pc.list_flatten(values)
    mm = pc.min_max(values)
    return mm["min"].as_py(), mm["max"].as_py()


def _check_types(meta: DatasetMeta, path: Path, where: str) -> None:
    """Sparse columns are int64 ids, or list<int64> bags exactly for meta.json's multi_hot features."""
    schema = pq.read_schema(path)
    for name in meta.sparse_features:
        if name in schema.names:
            check_column_type(pa.array([], schema.field(name).type), name, name in meta.multi_hot, where)


def check_split(meta: DatasetMeta, split: str) -> int:
    """Check one split's files; returns its row count."""
    rows = 0
    for path in meta.split_files[split]:
        where = f"{path.relative_to(meta.data_dir)}"
        _check_types(meta, path, where)
        for name, rg, lo, hi, nulls in _column_ranges(path, tuple(meta.columns)):
            if nulls:
                raise DatasetError(f"{where}: column {name!r} has {nulls} nulls (row group {rg})")
            if lo is None:
                lo, hi = _unrecorded(path, name)
                if lo is None:
                    continue  # an empty column
            _check_range(meta, name, lo, hi, f"{where} (row group {rg})")
        rows += pq.ParquetFile(path).metadata.num_rows
    if rows != meta.split_rows[split]:
        raise DatasetError(f"split {split!r} has {rows} rows in its files but meta.json says {meta.split_rows[split]}")
    return rows


def _check_range(meta: DatasetMeta, name: str, lo: Any, hi: Any, where: str) -> None:
    if name == meta.label:
        if lo < 0 or hi > 1:
            raise DatasetError(f"{where}: labels must be 0 or 1, found values in [{lo}, {hi}]")
    elif name in meta.table_sizes:
        size = meta.table_sizes[name]
        if lo < 0 or hi >= size:
            raise DatasetError(
                f"{where}: feature {name!r} has ids in [{lo}, {hi}], outside its table [0, {size}) "
                "(meta.json table_sizes); re-run mlet-prep or fix meta.json"
            )
    elif not (math.isfinite(lo) and math.isfinite(hi)):
        raise DatasetError(f"{where}: dense feature {name!r} has non-finite values (range [{lo}, {hi}])")


def check_dataset(meta: DatasetMeta, splits: Optional[Tuple[str, ...]] = None) -> Dict[str, int]:
    """Check the named splits (default: all) and the row accounting; rows per split."""
    rows = {split: check_split(meta, split) for split in (splits or tuple(meta.split_files))}
    if meta.rows_read is not None and meta.rows_rejected is not None and splits is None:
        accounted = meta.rows_rejected + sum(meta.split_rows.values())
        if accounted != meta.rows_read:
            raise DatasetError(
                f"{meta.data_dir}/meta.json: rows_read {meta.rows_read} != rows_rejected {meta.rows_rejected} "
                f"+ split rows {sum(meta.split_rows.values())}: the dataset is missing rows (a lost part file "
                "or an edited meta.json); re-run mlet-prep"
            )
    _check_unlisted_parts(meta)
    return rows


def _check_unlisted_parts(meta: DatasetMeta) -> None:
    """A part file on disk that meta.json does not list is data that would be silently skipped."""
    listed = {p.resolve() for files in meta.split_files.values() for p in files}
    for split in meta.split_files:
        folder = meta.data_dir / split
        if not folder.is_dir():
            continue
        for part in sorted(folder.glob("*.parquet")):
            if part.resolve() not in listed:
                raise DatasetError(
                    f"{part} is not listed in {meta.data_dir}/meta.json: its rows would be skipped; "
                    "re-run mlet-prep (or remove the stray file)"
                )
