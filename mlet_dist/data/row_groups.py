"""A split as a sequence of parquet row groups, and reading any row range of it.

The unit of reading is the row group (parquet decodes whole row groups), so a rank that owns rows
[lo, hi) of a split reads only the row groups that overlap them: its share plus at most the
partial row groups at the two ends. Shuffling permutes the row groups per epoch (every rank
computes the same permutation from (seed, epoch)) and then permutes rows inside windows of
``window`` rows of a segment (a bounded shuffle buffer, seeded by (seed, epoch, segment, window);
segments and pieces: epoch_plan.py). Everything is a pure function of (seed, epoch, segment), so a
resumed run reads the same rows in the same order and can skip straight to the window that holds
its next batch.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlet_dist.data.epoch_plan import Piece
from mlet_dist.errors import DatasetError


@dataclass(frozen=True)
class RowGroup:
    path: Path
    index: int  # row group number inside its file
    rows: int
    # The file's footer as parsed once by index_row_groups: re-parsing it (~6 ms for 100 row
    # groups x 40 columns) on every pass was a quarter of a W=32 rank's reading time.
    footer: Optional[pq.FileMetaData] = field(default=None, compare=False, repr=False)


def index_row_groups(files: Sequence[Path], columns: Sequence[str] = ()) -> List[RowGroup]:
    """Every row group of the files, in file order, from one read of each footer, which also
    checks that each file exists and has ``columns``: a bad split fails at construction, not
    mid-epoch."""
    groups: List[RowGroup] = []
    for path in files:
        if not path.is_file():
            raise DatasetError(f"dataset part file not found: {path} (listed in meta.json); re-run mlet-prep")
        with pq.ParquetFile(path) as pf:
            names = set(pf.schema_arrow.names)
            missing = [c for c in columns if c not in names]
            if missing:
                raise DatasetError(f"{path}: missing columns {missing}")
            md = pf.metadata
            groups.extend(RowGroup(path, i, md.row_group(i).num_rows, md) for i in range(md.num_row_groups))
    return [g for g in groups if g.rows]


def epoch_order(groups: Sequence[RowGroup], seed: int, epoch: int, shuffle: bool) -> List[RowGroup]:
    if not shuffle:
        return list(groups)
    perm = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(groups))
    return [groups[i] for i in perm]


class RowRangeReader:
    """Tables covering rows [lo, hi) of a row-group sequence, window by window.

    ``validate(table, where)`` runs on every row group as it is decoded; ``where`` names the
    file and row group, so an error says exactly which part of which file is bad.
    """

    def __init__(
        self,
        order: Sequence[RowGroup],
        columns: Sequence[str],
        validate: Callable[[pa.Table, str], None],
    ) -> None:
        self.order = list(order)
        self.columns = list(columns)
        self.validate = validate
        self.starts = np.concatenate([[0], np.cumsum([g.rows for g in self.order])]).astype(np.int64)
        self._files: Dict[Path, pq.ParquetFile] = {}
        self._cached: Optional[Tuple[int, pa.Table]] = None
        self._window_cache: Optional[Tuple[Tuple[int, int, int, int], pa.Table]] = None
        self.decoded_rows = 0  # rows of the row groups decoded so far (the cost of reading)

    @property
    def total_rows(self) -> int:
        return int(self.starts[-1])

    def _group_table(self, i: int) -> pa.Table:
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1]
        group = self.order[i]
        where = f"{group.path} (row group {group.index})"
        try:
            pf = self._files.get(group.path)
            if pf is None:
                if len(self._files) >= 8:  # keep a few files open, not thousands
                    self._files.pop(next(iter(self._files))).close()
                pf = self._files[group.path] = pq.ParquetFile(
                    group.path, metadata=group.footer, page_checksum_verification=True
                )
            table = pf.read_row_group(group.index, columns=self.columns).select(self.columns)
        except (OSError, pa.ArrowException) as err:
            raise DatasetError(f"cannot read {where}: {err}") from err
        if table.num_rows != group.rows:
            raise DatasetError(f"{where}: {table.num_rows} rows, the footer said {group.rows}")
        self.decoded_rows += table.num_rows
        self.validate(table, where)
        self._cached = (i, table)
        return table

    def read(self, lo: int, hi: int) -> pa.Table:
        """Rows [lo, hi) of the sequence as one table (row groups decoded as needed)."""
        if lo >= hi:
            return self._empty()
        first = bisect_right(self.starts, lo) - 1
        pieces = []
        i = first
        while i < len(self.order) and self.starts[i] < hi:
            table = self._group_table(i)
            a = max(lo, int(self.starts[i])) - int(self.starts[i])
            b = min(hi, int(self.starts[i + 1])) - int(self.starts[i])
            pieces.append(table.slice(a, b - a))
            i += 1
        return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]

    def _empty(self) -> pa.Table:
        return self._group_table(0).slice(0, 0) if self.order else pa.table({})

    def pieces(self, pieces: Sequence[Piece], window: int, shuffle_seed: Optional[Sequence[int]]) -> Iterator[pa.Table]:
        """The rows of ``pieces`` in order (epoch_plan.py): each segment's windows of ``window``
        rows are anchored at its start and, with ``shuffle_seed``, permuted by (*seed, seg_lo,
        window number). Only the windows that hold a piece's rows are read."""
        for p in pieces:
            for w in range(p.start // window, -(-p.stop // window)):
                table = self._window(p.seg_lo, p.seg_hi, w, window, shuffle_seed)
                a = max(p.start - w * window, 0)
                yield table.slice(a, min(p.stop - w * window, table.num_rows) - a)

    def _window(self, seg_lo: int, seg_hi: int, w: int, window: int, shuffle_seed: Optional[Sequence[int]]) -> pa.Table:
        key = (seg_lo, seg_hi, w, window)
        if self._window_cache is not None and self._window_cache[0] == key:
            return self._window_cache[1]
        a = seg_lo + w * window
        table = self.read(a, min(seg_hi, a + window))
        if shuffle_seed is not None:
            perm = np.random.default_rng([*shuffle_seed, seg_lo, w]).permutation(table.num_rows)
            table = table.take(pa.array(perm))
        self._window_cache = (key, table)
        return table

    def close(self) -> None:
        for pf in self._files.values():
            pf.close()
        self._files.clear()
        self._cached = None
        self._window_cache = None
