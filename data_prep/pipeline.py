"""The shared streaming preparation pipeline (Criteo Kaggle, Criteo Terabyte, Avazu).

A dataset is a `DatasetSpec` (raw columns and their kinds, separator, optional
header) plus a `SplitPolicy` (which accepted row goes to train/val/test). The
pipeline makes two streaming passes over the input files, in bounded memory:

* pass 1 validates every line (malformed lines go to rejects.tsv, or raise with
  --strict), counts accepted rows per file and counts categorical values of the
  train rows per feature (exact; see `KeyCounter` and the memory cap below);
* (Kaggle only) a tail pass re-reads the last ~1/7 of the file from a recorded
  block offset and subtracts the counts of rows that turned out to be val/test
  (the 7-chunk boundary is only known once all rows are counted);
* pass 2 parses again, encodes (dense transform, vocabulary / hash lookup) and
  appends to bounded parquet part files per split.

Categorical values are parsed into exact int64 keys whose order equals the byte
order of the raw values (see textio.parse_hex8 / parse_token7), so counting and
lookup are numpy sorts and binary searches, never per-row Python.

Memory: one block (default 8 MB of text and a few times that in arrays) plus the
per-feature counts (16 bytes per distinct train value). When the counts exceed
`count_memory_mb`, the feature with the most distinct values is switched to
hashing (id = splitmix64(value) % hash_size), its counts are dropped, and this is
repeated until under the cap; meta.json records which features were hashed and
why. Features that were not hashed are exact.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import glob
import math
import os
import re
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep import textio
from data_prep.vocabulary import vocabulary_meta, write_feature_vocab
from data_prep.dataset_format import (
    FORMAT_VERSION, META_FILE, REJECTS_FILE, SPLITS, bag_meta, parquet_schema, part_file, write_meta,
)

PathLike = Union[str, Path]

DEFAULT_COUNT_MEMORY_MB = 8192
# Buckets used when the memory cap forces hashing and no --hash-size was given
# (the reference DLRM's usual --max-ind-range for Criteo Terabyte).
DEFAULT_FALLBACK_HASH_SIZE = 40_000_000
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}  # train 0, val 1, test 2


@dataclass(frozen=True)
class PrepConfig:
    """Knobs of one preparation run (CLI flags map 1:1 onto these)."""

    min_count: int = 1  # train values seen fewer times map to id 0
    rows_per_file: int = 1_000_000  # bound on rows per parquet part file
    row_group_rows: int = 8_192  # parquet row group size (capped by rows_per_file); small so that a rank reads only its rows (FORMAT.md)
    strict: bool = False  # raise on the first malformed line instead of rejecting it
    overwrite: bool = False  # replace an existing prepared dataset at OUT
    hash_size: Optional[int] = None  # tables that would be larger are hashed into this many ids
    count_memory_mb: float = DEFAULT_COUNT_MEMORY_MB  # cap on value-count memory (then hashing)
    block_bytes: int = textio.DEFAULT_BLOCK_BYTES  # decompressed bytes parsed at a time
    progress: bool = False  # tqdm progress bars on stderr
    seed: int = 0  # random split (Avazu)
    threads: int = field(default_factory=lambda: min(os.cpu_count() or 1, 4))  # parsing threads
    workers: int = 1  # worker processes over files / byte ranges (1: this process; parallel.py)
    engine: str = "local"  # "local" (a process pool) or "dask" (a cluster; engine.py)
    scheduler: Optional[str] = None  # dask scheduler address (None: a local cluster of `workers`)

    def __post_init__(self) -> None:
        if not isinstance(self.count_memory_mb, (int, float)) or not self.count_memory_mb > 0:
            raise ValueError(f"count_memory_mb must be > 0, got {self.count_memory_mb!r}")
        if self.engine not in ("local", "dask"):
            raise ValueError(f"engine must be 'local' or 'dask', got {self.engine!r}")
        for name in ("min_count", "rows_per_file", "row_group_rows", "block_bytes", "threads", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.hash_size is not None and (not isinstance(self.hash_size, int) or self.hash_size < 2):
            raise ValueError(f"hash_size must be an integer >= 2 or None, got {self.hash_size!r}")


@dataclass(frozen=True)
class Reject:
    """One malformed input line."""

    line: int  # 1-based physical line number in the (decompressed) input
    reason: str
    raw: bytes
    file: str = ""  # input file name (no directory)


@dataclass(frozen=True)
class PrepResult:
    """What a run produced; `meta` is exactly what was written to meta.json."""

    out_dir: Path
    meta: Dict[str, Any]

    @property
    def rows_read(self) -> int:
        return int(self.meta["rows_read"])

    @property
    def rows_rejected(self) -> int:
        return int(self.meta["rows_rejected"])

    @property
    def split_rows(self) -> Dict[str, int]:
        return {s: int(self.meta["splits"][s]["rows"]) for s in SPLITS}

    @property
    def table_sizes(self) -> Dict[str, int]:
        return dict(self.meta["table_sizes"])


# ----------------------------------------------------------------------------
# Dataset description
# ----------------------------------------------------------------------------

_LABEL, _DENSE, _HEX8, _TOKEN, _HOUR, _IGNORE = "label", "dense_log", "hex8", "token7", "yymmddhh", "ignore"
HOUR_OUTPUTS = ("hour_of_day", "weekday")

_PY_CHECKS: Dict[str, Callable[[bytes], bool]] = {
    _LABEL: lambda v: v in (b"0", b"1"),
    _DENSE: lambda v: re.fullmatch(rb"(-?[0-9]{1,%d})?" % textio.MAX_DENSE_DIGITS, v) is not None,
    _HEX8: lambda v: re.fullmatch(rb"([0-9a-f]{8})?", v) is not None,
    _TOKEN: lambda v: re.fullmatch(rb"[0-9A-Za-z._-]{0,%d}" % textio.MAX_TOKEN_BYTES, v) is not None,
    _HOUR: lambda v: _valid_hour(v),
    _IGNORE: lambda v: True,
}
_REASONS = {
    _LABEL: "{name} must be 0 or 1, got {value}",
    _DENSE: "{name} must be an integer or empty, got {value}",
    _HEX8: "{name} must be 8 lowercase hex digits or empty, got {value}",
    _TOKEN: "{name} must be at most 7 characters of [0-9A-Za-z._-], got {value}",
    _HOUR: "{name} must be a valid YYMMDDHH hour, got {value}",
}


def _valid_hour(v: bytes) -> bool:
    if not re.fullmatch(rb"[0-9]{8}", v):
        return False
    try:
        datetime.datetime(2000 + int(v[0:2]), int(v[2:4]), int(v[4:6]), int(v[6:8]))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class RawColumn:
    name: str
    kind: str  # label | dense_log | hex8 | token7 | yymmddhh | ignore


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # meta["dataset"]
    columns: Tuple[RawColumn, ...]
    sep: bytes = b"\t"
    sep_name: str = "tab-separated"
    header: Optional[bytes] = None  # required first line of every input file
    label: str = "label"

    @property
    def dense_features(self) -> Tuple[str, ...]:
        out: List[str] = []
        for c in self.columns:
            if c.kind == _DENSE:
                out.append(c.name)
            elif c.kind == _HOUR:
                out.extend(HOUR_OUTPUTS)
        return tuple(out)

    @property
    def sparse_features(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind in (_HEX8, _TOKEN))

    def schema(self) -> pa.Schema:
        return parquet_schema(self.dense_features, self.sparse_features, self.label)

    def explain(self, raw: bytes) -> str:
        """Why a rejected line was rejected (Python; only called for rejected lines)."""
        if raw == b"":
            return "empty line"
        values = raw.split(self.sep)
        if len(values) != len(self.columns):
            return f"expected {len(self.columns)} {self.sep_name} columns, got {len(values)}"
        for col, value in zip(self.columns, values):
            if not _PY_CHECKS[col.kind](value):
                return _REASONS[col.kind].format(name=col.name, value=repr(value)[1:])
        return "malformed line"


@dataclass
class Parsed:
    """Accepted rows of one block, typed; plus the block's rejected lines."""

    lines: np.ndarray  # 1-based line numbers of the accepted rows
    label: np.ndarray  # int8
    dense: Dict[str, np.ndarray]  # float32 per dense feature
    keys: Dict[str, np.ndarray]  # int64 value keys per sparse feature
    rejects: List[Reject]


def parse_block(spec: DatasetSpec, block: textio.LineBlock, file_name: str) -> Parsed:
    arr = block.buf
    _, shaped, fs, fe = textio.split_fields(block, spec.sep[0], len(spec.columns))
    ok = np.ones(len(shaped), dtype=bool)
    label = np.zeros(len(shaped), np.int8)
    dense: Dict[str, np.ndarray] = {}
    keys: Dict[str, np.ndarray] = {}
    for j, col in enumerate(spec.columns):
        if col.kind == _IGNORE:
            continue
        s, e = fs[:, j], fe[:, j]
        if col.kind == _LABEL:
            okj, label = textio.parse_label01(arr, s, e)
        elif col.kind == _DENSE:
            okj, dense[col.name] = textio.parse_dense_log(arr, s, e)
        elif col.kind == _HEX8:
            okj, keys[col.name] = textio.parse_hex8(arr, s, e)
        elif col.kind == _TOKEN:
            okj, keys[col.name] = textio.parse_token7(arr, s, e)
        elif col.kind == _HOUR:
            okj, dense[HOUR_OUTPUTS[0]], dense[HOUR_OUTPUTS[1]] = textio.parse_yymmddhh(arr, s, e)
        else:  # pragma: no cover - spec error
            raise ValueError(f"unknown column kind {col.kind!r}")
        ok &= okj
    rejects: List[Reject] = []
    if not ok.all() or len(shaped) != block.num_lines:
        good = np.zeros(block.num_lines, dtype=bool)
        good[shaped[ok]] = True
        for i in np.flatnonzero(~good):
            raw = block.line(int(i))
            rejects.append(Reject(block.first_line + int(i), spec.explain(raw), raw, file_name))
    keep = ok if not ok.all() else slice(None)
    return Parsed(
        lines=block.first_line + shaped[keep],
        label=label[keep],
        dense={k: v[keep] for k, v in dense.items()},
        keys={k: v[keep] for k, v in keys.items()},
        rejects=rejects,
    )


# ----------------------------------------------------------------------------
# Split policies
# ----------------------------------------------------------------------------


class SplitPolicy:
    """Which accepted rows are train/val/test. Row positions are given as
    (file index, line numbers, accepted rows before this block overall / in its file)."""

    needs_tail_pass = False
    # assign() depends on line numbers, not only on positions among accepted rows (parallel.py
    # then counts lines before pass 1, and workers compute split codes themselves).
    uses_line_numbers = False

    def count_mask(self, fi: int, lines: np.ndarray) -> Optional[np.ndarray]:
        """Pass 1: rows whose values to count (None: all)."""
        return None

    def finish_pass1(self, rows_per_file: Sequence[int]) -> None:
        pass

    def assign(self, fi: int, lines: np.ndarray, acc: int, acc_file: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        raise NotImplementedError


def chunk_split_bounds(num_rows: int, chunks: int = 7) -> Dict[str, Tuple[int, int]]:
    """[start, stop) of train/val/test over accepted rows (reference DLRM split):
    `chunks` contiguous chunks as numpy.array_split; the last is halved, first half
    (rounded up) val, second half test."""
    base, extra = divmod(num_rows, chunks)
    train = sum(base + (1 if k < extra else 0) for k in range(chunks - 1))
    last = num_rows - train
    val = (last + 1) // 2
    return {"train": (0, train), "val": (train, train + val), "test": (train + val, num_rows)}


class ChunkSplit(SplitPolicy):
    """Criteo Kaggle: 7 contiguous chunks of all accepted rows; counts of the tail
    (val/test) are subtracted in the tail pass."""

    needs_tail_pass = True

    def __init__(self) -> None:
        self.bounds: Optional[Dict[str, Tuple[int, int]]] = None

    def finish_pass1(self, rows_per_file: Sequence[int]) -> None:
        self.bounds = chunk_split_bounds(int(sum(rows_per_file)))

    @property
    def train_end(self) -> int:
        assert self.bounds is not None
        return self.bounds["train"][1]

    def assign(self, fi: int, lines: np.ndarray, acc: int, acc_file: int) -> np.ndarray:
        assert self.bounds is not None
        idx = acc + np.arange(len(lines))
        return (idx >= self.bounds["val"][0]).astype(np.int8) + (idx >= self.bounds["test"][0]).astype(np.int8)

    def describe(self) -> Dict[str, Any]:
        return {"method": "dlrm-7-chunks", "chunks": 7}


class DaySplit(SplitPolicy):
    """Criteo Terabyte: all files but the last are train; the last file's accepted
    rows are halved, first half (rounded up) val, second half test."""

    def __init__(self, num_files: int) -> None:
        self.num_files = num_files
        self.last_val_rows = 0

    def count_mask(self, fi: int, lines: np.ndarray) -> Optional[np.ndarray]:
        return None if fi < self.num_files - 1 else np.zeros(len(lines), dtype=bool)

    def finish_pass1(self, rows_per_file: Sequence[int]) -> None:
        last = int(rows_per_file[-1]) if rows_per_file else 0
        self.last_val_rows = (last + 1) // 2

    def assign(self, fi: int, lines: np.ndarray, acc: int, acc_file: int) -> np.ndarray:
        if fi < self.num_files - 1:
            return np.zeros(len(lines), np.int8)
        idx = acc_file + np.arange(len(lines))
        return np.where(idx < self.last_val_rows, 1, 2).astype(np.int8)

    def describe(self) -> Dict[str, Any]:
        return {"method": "days", "train_files": self.num_files - 1, "val_test": "last file halved"}


class RandomSplit(SplitPolicy):
    """Avazu: each data line independently, by a seeded hash of its line number
    (so the split does not depend on block size or on other lines being rejected)."""

    uses_line_numbers = True

    def __init__(self, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1) -> None:
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction <= 1):
            raise ValueError("val_fraction and test_fraction must be >= 0 with a sum <= 1")
        self.seed, self.val_fraction, self.test_fraction = seed, val_fraction, test_fraction

    def _codes(self, fi: int, lines: np.ndarray) -> np.ndarray:
        salt = np.uint64((self.seed * 0x9E3779B1 + fi * 0x85EBCA77) & 0xFFFFFFFFFFFFFFFF)
        u = (textio.splitmix64(lines.astype(np.uint64) ^ salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        train = 1.0 - self.val_fraction - self.test_fraction
        return (u >= train).astype(np.int8) + (u >= train + self.val_fraction).astype(np.int8)

    def count_mask(self, fi: int, lines: np.ndarray) -> Optional[np.ndarray]:
        return self._codes(fi, lines) == 0

    def assign(self, fi: int, lines: np.ndarray, acc: int, acc_file: int) -> np.ndarray:
        return self._codes(fi, lines)

    def describe(self) -> Dict[str, Any]:
        return {
            "method": "random",
            "seed": self.seed,
            "fractions": [round(1 - self.val_fraction - self.test_fraction, 6), self.val_fraction, self.test_fraction],
        }


# ----------------------------------------------------------------------------
# Counting and vocabularies
# ----------------------------------------------------------------------------


def unique_counts(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return np.unique(keys, return_counts=True)


class KeyCounter:
    """Exact counts of int64 keys: sorted unique keys + counts, merged lazily."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self._pending: List[Tuple[np.ndarray, np.ndarray]] = []
        self._pending_len = 0

    def add(self, keys: np.ndarray, sign: int = 1) -> None:
        self.add_unique(*unique_counts(keys), sign=sign)

    def add_unique(self, u: np.ndarray, c: np.ndarray, sign: int = 1) -> None:
        """Add counts `c` of distinct keys `u` (as from unique_counts)."""
        if not len(u):
            return
        self._pending.append((u, c.astype(np.int64) * sign))
        self._pending_len += len(u)
        if self._pending_len > max(len(self.keys), 1 << 18):
            self.consolidate()

    def consolidate(self) -> None:
        if not self._pending:
            return
        k = np.concatenate([self.keys] + [p[0] for p in self._pending])
        c = np.concatenate([self.counts] + [p[1] for p in self._pending])
        self._pending, self._pending_len = [], 0
        order = np.argsort(k, kind="stable")
        k, c = k[order], c[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        k, c = k[starts], np.add.reduceat(c, starts) if len(c) else c
        nonzero = c != 0
        self.keys, self.counts = k[nonzero], c[nonzero]

    @property
    def nbytes(self) -> int:
        return 16 * (len(self.keys) + self._pending_len)


@dataclass
class FeatureVocab:
    """Value key -> id for one feature: exact vocabulary, or hashing."""

    size: int  # table size (ids in [0, size))
    hashed: bool = False
    sorted_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # kept keys, ascending
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # id of each sorted key

    def encode(self, keys: np.ndarray) -> np.ndarray:
        if self.hashed:
            return (textio.splitmix64(keys) % np.uint64(self.size)).astype(np.int64)
        if not len(self.sorted_keys):
            return np.zeros(len(keys), np.int64)
        pos = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self.sorted_keys) - 1)
        return np.where(self.sorted_keys[pos] == keys, self.ids[pos], 0)


def build_vocab(counter: KeyCounter, min_count: int) -> FeatureVocab:
    """Ids 1.. to keys with count >= min_count by descending count, then ascending
    key (= ascending raw value bytes); id 0 is rare/unseen."""
    counter.consolidate()
    kept = counter.counts >= min_count
    keys, counts = counter.keys[kept], counter.counts[kept]
    order = np.lexsort((keys, -counts))
    ids = np.empty(len(keys), np.int64)
    ids[order] = np.arange(1, len(keys) + 1, dtype=np.int64)
    return FeatureVocab(size=len(keys) + 1, sorted_keys=keys, ids=ids)


def count_histogram(counts: np.ndarray) -> Dict[str, Any]:
    """Distinct values and rows per power-of-two count bucket: bucket k holds counts
    in [2**k, 2**(k+1))."""
    counts = counts[counts > 0]
    if not len(counts):
        return {"values_per_bucket": [], "rows_per_bucket": []}
    bucket = np.floor(np.log2(counts)).astype(np.int64)
    # exact for large counts too (float log2 can round up at 2**k - 1)
    bucket -= (np.left_shift(1, bucket) > counts).astype(np.int64)
    n = int(bucket.max()) + 1
    return {
        "values_per_bucket": np.bincount(bucket, minlength=n).astype(np.int64).tolist(),
        "rows_per_bucket": np.bincount(bucket, weights=counts, minlength=n).astype(np.int64).tolist(),
    }


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------


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
            self._writer = pq.ParquetWriter(self.root / rel, self.schema, compression="zstd")
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


def check_output(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"output already exists: {out} (use --overwrite / overwrite=True to replace it)")
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"refusing to overwrite {out}: not a directory")
    if not (out / META_FILE).is_file() and any(out.iterdir()):
        # Guard against `--overwrite` pointed at the wrong (non-dataset) directory.
        raise FileExistsError(f"refusing to overwrite {out}: not empty and has no {META_FILE}")


def check_input(src: Path) -> None:
    if not src.exists():
        raise FileNotFoundError(f"input file not found: {src}")
    if not src.is_file():
        raise FileNotFoundError(f"input is not a regular file: {src}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_staging(out: Path) -> List[Path]:
    """Remove ``OUT.tmp-<pid>`` / ``OUT.old-<pid>`` dirs of runs that were killed (their process is
    gone): at Terabyte scale each one holds gigabytes. Live runs' dirs are left alone."""
    removed = []
    for path in out.parent.glob(f"{glob.escape(out.name)}.*-*"):
        kind, _, pid = path.name[len(out.name) + 1:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            print(f"removed stale staging dir {path} (left by a killed run)", file=sys.stderr)
    return removed


def encoded_rows(spec: DatasetSpec, parsed: Parsed, ids: Dict[str, np.ndarray], sel: np.ndarray,
                 schema: pa.Schema, zero_rows: Dict[str, List[int]], code: int) -> pa.Table:
    """The selected rows of a parsed block as a table of the dataset schema (label, dense, ids),
    counting id-0 rows per feature into ``zero_rows[feature][code]`` (meta.json's id0_rows)."""
    cols = [pa.array(parsed.label[sel], pa.int8())]
    cols += [pa.array(parsed.dense[d][sel], pa.float32()) for d in spec.dense_features]
    for name in spec.sparse_features:
        col = ids[name][sel]
        zero_rows[name][code] += int(np.count_nonzero(col == 0))
        cols.append(pa.array(col, pa.int64()))
    return pa.Table.from_arrays(cols, schema=schema)


def checked_paths(sources: Sequence[PathLike], out: PathLike, overwrite: bool) -> Tuple[List[Path], Path]:
    """(input paths, output path) after the checks every preparation makes before any work:
    inputs exist and are files with distinct names (rejects name them), the output may be written."""
    paths = [Path(s) for s in sources]
    if not paths:
        raise ValueError("no input files given")
    for p in paths:
        check_input(p)
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"input file names must be distinct (rejects name them): {names}")
    out_path = Path(out)
    check_output(out_path, overwrite)
    return paths, out_path


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """Temp dir next to `out` (same filesystem, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    check_output(out, overwrite)  # re-check: something may have appeared meanwhile
    if out.exists():
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


# ----------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------


class Progress:
    """tqdm bar over on-disk input bytes (MB/s), with rows and rows/s in the postfix."""

    def __init__(self, enabled: bool, total_bytes: int, desc: str, unit: str = "B") -> None:
        self.bar = None
        self.rows = 0
        self.t0 = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_bytes, unit=unit, unit_scale=True, unit_divisor=1_000_000 if unit == "B" else 1000,
                desc=desc, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5,
            )

    def update(self, nbytes: int, rows: int) -> None:
        self.rows += rows
        if self.bar is not None:
            rate = self.rows / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.rows:,} rows, {rate:,.0f} rows/s", refresh=False)
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------


@dataclass
class _Checkpoint:
    fi: int
    offset: int
    first_line: int
    acc: int  # accepted rows before this block, overall
    acc_file: int  # ... in its file


def _scan(
    spec: DatasetSpec,
    path: Path,
    cfg: PrepConfig,
    progress: Progress,
    start: Optional[_Checkpoint] = None,
    work: Optional[Callable[[Parsed], Any]] = None,
) -> Iterator[Tuple[textio.LineBlock, Parsed, List[Reject], Any]]:
    """Parsed blocks of one file, in order; the third item adds a truncated-gzip
    reject, the fourth is work(parsed). Parsing and `work` run on a few threads
    (numpy releases the GIL), with a bounded number of blocks in flight."""
    offset, line = (start.offset, start.first_line) if start else (0, 1)

    def job(block: textio.LineBlock) -> Tuple[textio.LineBlock, Parsed, Any]:
        parsed = parse_block(spec, block, path.name)
        return block, parsed, (work(parsed) if work is not None else None)

    def blocks() -> Iterator[textio.LineBlock]:
        for block in textio.iter_line_blocks(path, cfg.block_bytes, offset, line):
            if spec.header is not None and block.first_line == 1 and block.num_lines:
                first = block.line(0)
                if first != spec.header:
                    raise ValueError(
                        f"{path}:1: expected the header line {spec.header.decode()!r}, got {first[:200]!r}"
                    )
                block = block.drop_first_line()
            yield block

    workers = max(1, min(cfg.threads, 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        inflight: Deque[Future] = collections.deque()
        source = blocks()
        try:
            for block in source:
                inflight.append(pool.submit(job, block))
                if len(inflight) > workers:
                    yield _finish(inflight.popleft().result(), path, progress)
            while inflight:
                yield _finish(inflight.popleft().result(), path, progress)
        finally:
            for f in inflight:
                f.cancel()


def _finish(
    done: Tuple[textio.LineBlock, Parsed, Any], path: Path, progress: Progress
) -> Tuple[textio.LineBlock, Parsed, List[Reject], Any]:
    block, parsed, result = done
    extra: List[Reject] = []
    if block.truncated is not None:
        reason, tail = block.truncated
        if tail:
            reason += f"; last line incomplete ({len(tail)} bytes)"
        extra.append(Reject(block.first_line + block.num_lines, reason, tail, path.name))
    progress.update(block.src_bytes, len(parsed.lines))
    return block, parsed, extra, result


def run_prep(
    spec: DatasetSpec,
    sources: Sequence[PathLike],
    out: PathLike,
    cfg: PrepConfig,
    policy: SplitPolicy,
    extra_meta: Optional[Dict[str, Any]] = None,
) -> PrepResult:
    """Prepare `sources` (in order) into a dataset directory at `out` (FORMAT.md). With
    cfg.workers > 1 or the dask engine, worker processes do the passes (parallel.py), writing the
    same bytes."""
    if cfg.workers > 1 or cfg.engine == "dask":
        from data_prep.parallel import run_prep_parallel

        return run_prep_parallel(spec, sources, out, cfg, policy, extra_meta)
    paths, out_path = checked_paths(sources, out, cfg.overwrite)
    total_bytes = sum(p.stat().st_size for p in paths)
    sparse = spec.sparse_features
    passes = 3 if policy.needs_tail_pass else 2

    with staging_dir(out_path) as tmp:
        sink = RejectSink(tmp / REJECTS_FILE, cfg.strict, {p.name: p for p in paths})
        counters: Dict[str, Optional[KeyCounter]] = {f: KeyCounter() for f in sparse}
        hashed: Dict[str, str] = {}
        cap = int(cfg.count_memory_mb * (1 << 20))
        checkpoints: List[_Checkpoint] = []
        rows_per_file: List[int] = []
        acc = 0
        try:
            # ---- pass 1: validate, count rows and train values ----
            progress = Progress(cfg.progress, total_bytes, f"1/{passes} count")
            for fi, path in enumerate(paths):
                acc_file = 0
                def count_work(parsed: Parsed, fi: int = fi) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
                    mask = policy.count_mask(fi, parsed.lines)
                    return {
                        name: unique_counts(parsed.keys[name] if mask is None else parsed.keys[name][mask])
                        for name, counter in list(counters.items())
                        if counter is not None
                    }

                for block, parsed, extra, uniq in _scan(spec, path, cfg, progress, work=count_work):
                    sink.add(parsed.rejects)
                    n = len(parsed.lines)
                    checkpoints.append(_Checkpoint(fi, block.offset, block.first_line, acc, acc_file))
                    for name, counter in counters.items():
                        if counter is not None and name in uniq:
                            counter.add_unique(*uniq[name])
                    acc += n
                    acc_file += n
                    _enforce_cap(counters, hashed, cap)
                    sink.add(extra)
                rows_per_file.append(acc_file)
            progress.close()
            policy.finish_pass1(rows_per_file)

            # ---- tail pass (Kaggle): subtract counts of rows that are not train ----
            if isinstance(policy, ChunkSplit) and acc > policy.train_end:
                start = max(c for c in range(len(checkpoints)) if checkpoints[c].acc <= policy.train_end)
                cp = checkpoints[start]
                progress = Progress(cfg.progress, total_bytes - _approx_offset(paths[cp.fi], cp.offset), f"2/{passes} tail")
                pos = cp.acc
                for _block, parsed, _extra, _ in _scan(spec, paths[cp.fi], cfg, progress, start=cp):
                    n = len(parsed.lines)
                    lo = max(policy.train_end - pos, 0)
                    for name, counter in counters.items():
                        if counter is not None and lo < n:
                            counter.add(parsed.keys[name][lo:], sign=-1)
                    pos += n
                progress.close()

            # ---- vocabularies ----
            vocabs, histograms = finish_vocabs(sparse, counters, hashed, cfg)
            vocab_entries = _save_vocabularies(tmp, spec, vocabs)

            # ---- pass 2: encode and write ----
            schema = spec.schema()
            writers = {s: SplitWriter(tmp, s, schema, cfg) for s in SPLITS}
            zero_rows = {name: [0, 0, 0] for name in sparse}
            progress = Progress(cfg.progress, total_bytes, f"{passes}/{passes} write")
            acc2 = 0
            for fi, path in enumerate(paths):
                acc_file = 0
                def encode_work(parsed: Parsed) -> Dict[str, np.ndarray]:
                    return {name: vocabs[name].encode(parsed.keys[name]) for name in sparse}

                for _block, parsed, _extra, ids in _scan(spec, path, cfg, progress, work=encode_work):
                    n = len(parsed.lines)
                    codes = policy.assign(fi, parsed.lines, acc2, acc_file)
                    for code, split in enumerate(SPLITS):
                        sel = codes == code
                        if not sel.any():
                            continue
                        writers[split].write(encoded_rows(spec, parsed, ids, sel, schema, zero_rows, code))
                    acc2 += n
                    acc_file += n
            progress.close()
            for w in writers.values():
                w.close()
            if acc2 != acc:
                raise RuntimeError(f"input changed during preparation: {acc} rows accepted in pass 1, {acc2} in pass 2")
        finally:
            sink.close()

        splits_meta = {s: {"rows": writers[s].rows, "files": writers[s].files} for s in SPLITS}
        meta = build_meta(spec, [p.name for p in paths], cfg, policy, vocabs, histograms, hashed, zero_rows,
                          splits_meta,
                          acc, sink, rows_per_file, vocab_entries)
        meta.update(extra_meta or {})
        write_meta(tmp, meta)
        publish(tmp, out_path, cfg.overwrite)
    return PrepResult(out_dir=out_path, meta=meta)


def finish_vocabs(
    sparse: Sequence[str], counters: Dict[str, Optional["KeyCounter"]], hashed: Dict[str, str], cfg: PrepConfig
) -> Tuple[Dict[str, "FeatureVocab"], Dict[str, Dict[str, Any]]]:
    """Vocabularies and count histograms from the final train counts (frees the counts)."""
    vocabs: Dict[str, FeatureVocab] = {}
    histograms: Dict[str, Dict[str, Any]] = {}
    fallback = cfg.hash_size or DEFAULT_FALLBACK_HASH_SIZE
    for name in sparse:
        counter = counters[name]
        if counter is None:
            vocabs[name] = FeatureVocab(size=fallback, hashed=True)
            histograms[name] = {"distinct_train_values": None}
            continue
        vocab = build_vocab(counter, cfg.min_count)
        hist = count_histogram(counter.counts)
        hist["distinct_train_values"] = int(len(counter.keys))
        hist["rare_train_values"] = int(len(counter.keys) - (vocab.size - 1))
        if cfg.hash_size is not None and vocab.size > cfg.hash_size:
            hashed[name] = f"table of {vocab.size} ids exceeds hash_size"
            vocab = FeatureVocab(size=cfg.hash_size, hashed=True)
        vocabs[name] = vocab
        histograms[name] = hist
        counters[name] = None  # free the counts before pass 2
    return vocabs, histograms


def build_meta(
    spec: DatasetSpec, names: Sequence[str], cfg: PrepConfig, policy: SplitPolicy,
    vocabs: Dict[str, "FeatureVocab"], histograms: Dict[str, Dict[str, Any]], hashed: Dict[str, str],
    zero_rows: Dict[str, List[int]], splits_meta: Dict[str, Any], acc: int, sink: "RejectSink",
    rows_per_file: Sequence[int], vocab_entries: Dict[str, Dict[str, Any]],
) -> Dict[str, Any]:
    """meta.json of a raw-data preparation (both the single-process and the parallel run)."""
    sparse = spec.sparse_features
    for name in sparse:
        histograms[name]["id0_rows"] = dict(zip(SPLITS, zero_rows[name]))
        histograms[name]["hashed"] = vocabs[name].hashed
    return {
        "format_version": FORMAT_VERSION,
        "dataset": spec.name,
        "source": names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} files)",
        "sources": names,
        "label": spec.label,
        "dense_features": list(spec.dense_features),
        "sparse_features": list(sparse),
        "table_sizes": {name: int(vocabs[name].size) for name in sparse},
        "min_count": cfg.min_count,
        "hash_size": cfg.hash_size,
        "count_memory_mb": cfg.count_memory_mb,
        "hashed_features": dict(sorted(hashed.items())),
        "splits": splits_meta,
        "split": policy.describe(),
        "rows_read": int(acc + sink.count),
        "rows_rejected": int(sink.count),
        "rows_rejected_by_kind": dict(sorted(sink.by_reason.items())),
        "rows_per_source": {n: int(r) for n, r in zip(names, rows_per_file)},
        "rejects_file": REJECTS_FILE if sink.count else None,
        "id_histograms": histograms,
        **bag_meta(sparse),
        "vocabulary": vocabulary_meta(vocab_entries),
    }


def _save_vocabularies(out: Path, spec: DatasetSpec, vocabs: Dict[str, "FeatureVocab"]) -> Dict[str, Dict[str, Any]]:
    """Each exact feature's vocabulary as OUT/vocab/<feature>.parquet (data_prep/vocabulary.py), so
    later data can be encoded with it; hashed features need only their kind and table size."""
    kinds = {c.name: c.kind for c in spec.columns}
    entries: Dict[str, Dict[str, Any]] = {}
    for name, vocab in vocabs.items():
        if vocab.hashed:
            entries[name] = {"kind": kinds[name], "hashed": True}
        else:
            rel = write_feature_vocab(out, name, kinds[name], vocab.sorted_keys, vocab.ids)
            entries[name] = {"kind": kinds[name], "hashed": False, "file": rel, "values": int(len(vocab.sorted_keys))}
    return entries


def _approx_offset(path: Path, offset: int) -> int:
    """On-disk bytes before a decompressed offset (exact for plain files)."""
    return 0 if textio.is_gzip(path) else offset


def _enforce_cap(counters: Dict[str, Optional[KeyCounter]], hashed: Dict[str, str], cap: int) -> None:
    """Switch the largest features to hashing while the counts exceed the cap."""
    if sum(c.nbytes for c in counters.values() if c is not None) <= cap:
        return
    for c in counters.values():
        if c is not None:
            c.consolidate()
    while True:
        live = {n: c for n, c in counters.items() if c is not None}
        if not live or sum(c.nbytes for c in live.values()) <= cap:
            return
        name = max(live, key=lambda n: (live[n].nbytes, n))
        hashed[name] = f"value counts exceeded count_memory_mb ({len(live[name].keys)} distinct values so far)"
        counters[name] = None
