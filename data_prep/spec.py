"""What a raw-data preparation is given: the run's knobs (`PrepConfig`), the dataset's raw columns
(`DatasetSpec`), and how one block of text becomes typed arrays (`parse_block`) plus the lines it
rejects. Kept apart from the passes so that raw serving (mlet_dist/serving/raw_input.py) parses a
request exactly as the preparation parsed the training data, without importing the writers.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa

from data_prep import textio
from data_prep.dataset_format import SPLITS, parquet_schema

PathLike = Union[str, Path]

DEFAULT_COUNT_MEMORY_MB = 8192


@dataclass(frozen=True)
class PrepConfig:
    """Knobs of one preparation run (CLI flags map 1:1 onto these)."""

    min_count: int = 1  # train values seen fewer times map to id 0
    rows_per_file: int = 1_000_000  # bound on rows per parquet part file
    row_group_rows: int = (
        8_192  # parquet row group size (capped by rows_per_file); small so that a rank reads only its rows (FORMAT.md)
    )
    strict: bool = False  # raise on the first malformed line instead of rejecting it
    overwrite: bool = False  # replace an existing prepared dataset at OUT
    hash_size: Optional[int] = None  # tables that would be larger are hashed into this many ids
    count_memory_mb: float = DEFAULT_COUNT_MEMORY_MB  # cap on value-count memory (then hashing)
    block_bytes: int = textio.DEFAULT_BLOCK_BYTES  # decompressed bytes parsed at a time
    progress: bool = False  # tqdm progress bars on stderr
    seed: int = 0  # random split (Avazu)
    threads: int = field(default_factory=lambda: min(os.cpu_count() or 1, 4))  # parsing threads
    workers: int = 1  # worker processes over files / byte ranges (1: threads of this process; parallel/)
    engine: str = "local"  # "local" (a process pool) or "dask" (a cluster; parallel/engine.py)
    scheduler: Optional[str] = None  # dask scheduler address (None: a local cluster of `workers`)
    vocab_from: Optional[str] = None  # encode with this prepared dataset's vocabulary, no counting (vocab_from.py)

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
        if self.vocab_from is not None and (self.min_count != 1 or self.hash_size is not None):
            raise ValueError(
                "--vocab-from encodes with a saved vocabulary; --min-count and --hash-size build a new "
                "one and cannot be combined with it"
            )


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


# Rows parsed at a time: each column's kernel then works on a slice of the block that stays in cache
# (the text of ~8k rows and its intermediates), ~1.5x faster than whole-block columns.
PARSE_CHUNK_ROWS = 8192


def parse_block(spec: DatasetSpec, block: textio.LineBlock, file_name: str) -> Parsed:
    arr = block.buf
    _, shaped, fs, fe = textio.split_fields(block, spec.sep[0], len(spec.columns))
    chunks = [
        _parse_columns(spec, arr, fs[lo : lo + PARSE_CHUNK_ROWS], fe[lo : lo + PARSE_CHUNK_ROWS])
        for lo in range(0, max(len(shaped), 1), PARSE_CHUNK_ROWS)
    ]
    ok, label, dense, keys = chunks[0] if len(chunks) == 1 else _concat_chunks(chunks)
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


_Columns = Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray], Dict[str, np.ndarray]]


def _parse_columns(spec: DatasetSpec, arr: np.ndarray, fs: np.ndarray, fe: np.ndarray) -> _Columns:
    """(ok, label, dense, keys) of the rows whose field bounds are fs/fe."""
    ok = np.ones(len(fs), dtype=bool)
    label = np.zeros(len(fs), np.int8)
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
    return ok, label, dense, keys


def _concat_chunks(chunks: List[_Columns]) -> _Columns:
    return (
        np.concatenate([c[0] for c in chunks]),
        np.concatenate([c[1] for c in chunks]),
        {k: np.concatenate([c[2][k] for c in chunks]) for k in chunks[0][2]},
        {k: np.concatenate([c[3][k] for c in chunks]) for k in chunks[0][3]},
    )
