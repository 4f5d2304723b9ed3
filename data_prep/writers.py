"""What a preparation writes besides meta.json: parquet part files per split (`SplitWriter`, whose
bytes do not depend on how the input was blocked or split among workers), the rows of one block
in the dataset schema (`encoded_rows`), and rejects.tsv (`RejectSink`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.dataset_format import SPLITS, part_file
from data_prep.spec import DatasetSpec, Parsed, PrepConfig, Reject

# Parquet LZ4_RAW, not zstd: zstd's ~25 us set-up per column chunk (~1 ms per 40-column row group)
# halved the training reader's rows per CPU-second at 8,192-row groups, for files ~30% smaller
# (FORMAT.md; benchmarks/bench_input.py). Readers need LZ4_RAW support (Arrow >= 9, Spark >= 3.4).
PARQUET_COMPRESSION = "lz4"
# Page checksums (CRC32 per data page): without them a flipped bit on disk can decode to another
# valid id and train silently; the readers verify them (row_groups.py, dataset_check.py, scoring.py).
PARQUET_PAGE_CHECKSUMS = True


class SplitWriter:
    """Appends tables to part files of at most rows_per_file rows, in row groups
    of exactly row_group_rows rows (the last may be shorter), so the bytes do not
    depend on how the input was blocked."""

    def __init__(self, root: Path, split: str, schema: pa.Schema, cfg: PrepConfig, first_index: int = 0) -> None:
        self.root, self.split, self.schema = root, split, schema
        self.first_index = first_index  # number of the first part file (parallel writers write one each)
        self.rows_per_file = cfg.rows_per_file
        self.group_rows = min(cfg.row_group_rows, cfg.rows_per_file)
        (root / split).mkdir(parents=True, exist_ok=True)
        self.files: List[str] = []
        self.rows = 0
        self._writer: Optional[pq.ParquetWriter] = None
        self._file_rows = 0
        self._buffer: List[pa.Table] = []
        self._buffered = 0

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self._buffer.append(table)
        self._buffered += table.num_rows
        while self._buffered >= self._next_group():
            self._flush(self._next_group())

    def _next_group(self) -> int:
        return min(self.group_rows, self.rows_per_file - self._file_rows)

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self._buffer)
        head, rest = table.slice(0, n), table.slice(n)
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows
        if self._writer is None:
            rel = part_file(self.split, self.first_index + len(self.files))
            self._writer = pq.ParquetWriter(
                self.root / rel,
                self.schema,
                compression=PARQUET_COMPRESSION,
                write_page_checksum=PARQUET_PAGE_CHECKSUMS,
            )
            self.files.append(rel)
        self._writer.write_table(head, row_group_size=n)
        self._file_rows += n
        self.rows += n
        if self._file_rows >= self.rows_per_file:
            self._writer.close()
            self._writer, self._file_rows = None, 0

    def close(self) -> None:
        if self._buffered:
            self._flush(self._buffered)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def written_splits(writers: Mapping[str, SplitWriter]) -> Dict[str, Dict[str, Any]]:
    """meta.json's ``splits`` of closed writers: rows and part files of each split."""
    return {split: {"rows": writers[split].rows, "files": writers[split].files} for split in SPLITS}


MAX_REJECT_RAW_BYTES = 4096


def clip_raw(raw: bytes) -> bytes:
    """A rejected line as written to rejects.tsv: whole up to 4 KiB, else its head and a note of
    its length (one 50 MB bad value must not make a 100 MB rejects file)."""
    if len(raw) <= MAX_REJECT_RAW_BYTES:
        return raw
    return raw[:MAX_REJECT_RAW_BYTES] + f"...[truncated: {len(raw):,} bytes in all]".encode()


class RejectSink:
    """Streams rejects to rejects.tsv (`file, line, reason, raw`); --strict raises."""

    def __init__(self, path: Path, strict: bool, sources: Dict[str, Path]) -> None:
        self.path, self.strict, self.sources = path, strict, sources
        self.count = 0
        self.by_reason: Dict[str, int] = {}
        self.first: Optional[str] = None  # "file:line: reason" of the first reject, for a refusal's one line
        self._f: Optional[Any] = None

    def add(self, rejects: Sequence[Reject]) -> None:
        for r in rejects:
            if self.strict:
                raise ValueError(f"{self.sources.get(r.file, r.file)}:{r.line}: malformed line: {r.reason}")
            self.add_record(r.file, r.line, *format_reject(r))

    def add_record(self, file: str, line: int, reason: str, raw: bytes, kind: str) -> None:
        """One record already clipped by format_reject (parallel workers format their own)."""
        if self._f is None:
            self._f = open(self.path, "wb")
            self._f.write(b"file\tline\treason\traw\n")
        self._f.write(f"{file}\t{line}\t{reason}\t".encode("utf-8") + raw + b"\n")
        self.count += 1
        if self.first is None:
            self.first = f"{file}:{line}: {reason}"
        self.by_reason[kind] = self.by_reason.get(kind, 0) + 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def format_reject(r: Reject) -> Tuple[str, bytes, str]:
    """(reason as written, raw as written, kind) of a reject: both clipped, since a reason may
    quote a huge value."""
    reason = r.reason if len(r.reason) <= 300 else r.reason[:300] + "..."
    return reason, clip_raw(r.raw), reject_kind(r.reason)


def reject_kind(reason: str) -> str:
    """Coarse reason class for meta.json and the CLI summary."""
    if reason == "empty line":
        return "empty_line"
    if reason.startswith("expected "):
        return "column_count"
    if "gzip" in reason:
        return "gzip"
    m = re.match(r"(\S+) must be", reason)
    return f"bad_value:{m.group(1)}" if m else "other"


def encoded_rows(
    spec: DatasetSpec,
    parsed: Parsed,
    ids: Dict[str, np.ndarray],
    sel: np.ndarray,
    schema: pa.Schema,
    zero_rows: Dict[str, List[int]],
    code: int,
) -> pa.Table:
    """The selected rows of a parsed block as a table of the dataset schema (label, dense, ids),
    counting id-0 rows per feature into ``zero_rows[feature][code]`` (meta.json's id0_rows)."""
    cols = [pa.array(parsed.label[sel], pa.int8())]
    cols += [pa.array(parsed.dense[d][sel], pa.float32()) for d in spec.dense_features]
    for name in spec.sparse_features:
        col = ids[name][sel]
        zero_rows[name][code] += int(np.count_nonzero(col == 0))
        cols.append(pa.array(col, pa.int64()))
    return pa.Table.from_arrays(cols, schema=schema)
