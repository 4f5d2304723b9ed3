"""Criteo Kaggle (Display Advertising Challenge) train.txt -> prepared parquet dataset.

The on-disk result is described in FORMAT.md. This is the minimal version: the
whole input is held in memory (fine for samples and tests; a later change makes
it streaming for the 45M-row file). All per-row work on the valid path is done
with vectorised pyarrow/numpy kernels; Python only touches rejected lines.

Lines are read with pyarrow.csv as single binary cells (so every physical line
keeps its 1-based line number and exact raw bytes, and a bad first line or
non-UTF-8 bytes cannot derail column inference) and then split on tabs with
pyarrow.compute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from data_prep.dataset_format import (
    CRITEO_DENSE_FEATURES,
    CRITEO_RAW_COLUMNS,
    CRITEO_SPARSE_FEATURES,
    DATASET_CRITEO_KAGGLE,
    FORMAT_VERSION,
    LABEL,
    META_FILE,
    REJECTS_FILE,
    SPLITS,
    parquet_schema,
    part_file,
    write_meta,
)

PathLike = Union[str, Path]

NUM_RAW_COLUMNS = len(CRITEO_RAW_COLUMNS)  # 40
NUM_DAY_CHUNKS = 7  # reference DLRM split: 6 chunks train, 7th halved into val/test
# A delimiter that never occurs in valid lines, so pyarrow.csv yields whole lines.
_LINE_DELIMITER = "\x01"
_DENSE_RE = r"^(-?[0-9]+)?$"  # optional integer; empty allowed
_SPARSE_RE = r"^([0-9a-f]{8})?$"  # 8 lowercase hex digits; empty allowed


@dataclass(frozen=True)
class PrepConfig:
    """Knobs of one preparation run (CLI flags map 1:1 onto these)."""

    min_count: int = 1  # train values seen fewer times map to id 0
    rows_per_file: int = 1_000_000  # bound on rows per parquet part file
    row_group_rows: int = 131_072  # parquet row group size (capped by rows_per_file)
    strict: bool = False  # raise on the first malformed line instead of rejecting it
    overwrite: bool = False  # replace an existing prepared dataset at OUT

    def __post_init__(self) -> None:
        for name in ("min_count", "rows_per_file", "row_group_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class Reject:
    """One malformed input line."""

    line: int  # 1-based physical line number in the (decompressed) input
    reason: str
    raw: bytes


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


def prepare_criteo_kaggle(
    src: PathLike, out: PathLike, config: Optional[PrepConfig] = None, **overrides: Any
) -> PrepResult:
    """Convert a Criteo Kaggle TSV (plain or gzip) into a prepared dataset at `out`.

    `overrides` are PrepConfig fields (e.g. min_count=3, strict=True). Output is
    written to a temp dir next to `out` and renamed into place, so `out` is either
    absent, the old dataset, or the complete new one.
    """
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    src_path, out_path = Path(src), Path(out)
    _check_input(src_path)
    _check_output(out_path, cfg.overwrite)

    lines, line_numbers, rejects = _read_lines(src_path)
    fields, reject_rows = _parse_lines(lines, line_numbers)
    rejects = sorted(rejects + reject_rows, key=lambda r: r.line)
    if rejects and cfg.strict:
        first = rejects[0]
        raise ValueError(f"{src_path}:{first.line}: malformed line: {first.reason}")

    bounds = split_bounds(fields.num_rows)
    vocabs = {
        name: build_vocab(fields.column(name).slice(*bounds["train"]), cfg.min_count)
        for name in CRITEO_SPARSE_FEATURES
    }
    table_sizes = {name: len(v) + 1 for name, v in vocabs.items()}

    with _staging_dir(out_path) as tmp:
        splits_meta = {}
        for split in SPLITS:
            start, stop = bounds[split]
            encoded = encode_fields(fields.slice(start, stop - start), vocabs)
            files = _write_parts(encoded, tmp, split, cfg)
            splits_meta[split] = {"rows": encoded.num_rows, "files": files}
        if rejects:
            _write_rejects(tmp / REJECTS_FILE, rejects)
        meta = _build_meta(src_path, cfg, table_sizes, splits_meta, fields.num_rows, len(rejects))
        write_meta(tmp, meta)
        _publish(tmp, out_path, cfg.overwrite)
    return PrepResult(out_dir=out_path, meta=meta)


def _build_meta(
    src: Path,
    cfg: PrepConfig,
    table_sizes: Dict[str, int],
    splits: Dict[str, Dict[str, Any]],
    rows_kept: int,
    rows_rejected: int,
) -> Dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "dataset": DATASET_CRITEO_KAGGLE,
        "source": src.name,
        "label": LABEL,
        "dense_features": list(CRITEO_DENSE_FEATURES),
        "sparse_features": list(CRITEO_SPARSE_FEATURES),
        "table_sizes": table_sizes,
        "min_count": cfg.min_count,
        "splits": splits,
        "rows_read": int(rows_kept + rows_rejected),  # every input line is kept or rejected
        "rows_rejected": int(rows_rejected),
        "rejects_file": REJECTS_FILE if rows_rejected else None,
    }


# ----------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------


def _check_input(src: Path) -> None:
    if not src.exists():
        raise FileNotFoundError(f"input file not found: {src}")
    if not src.is_file():
        raise FileNotFoundError(f"input is not a regular file: {src}")


def _is_gzip(src: Path) -> bool:
    """Detect gzip by magic bytes, so a .gz without the suffix (or vice versa) works."""
    with open(src, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_lines(src: Path) -> Tuple[pa.ChunkedArray, np.ndarray, List[Reject]]:
    """All lines of `src` as binary cells, their 1-based line numbers, and lines
    pyarrow could not return as a single cell (they contain the 0x01 byte)."""
    odd: List[Reject] = []

    def on_invalid_row(row: Any) -> str:
        text = row.text if isinstance(row.text, str) else str(row.text)
        odd.append(Reject(int(row.number), "line contains a 0x01 control byte", text.encode("utf-8")))
        return "skip"

    read_opts = pacsv.ReadOptions(column_names=["line"], use_threads=False)  # threads off: row numbers
    parse_opts = pacsv.ParseOptions(
        delimiter=_LINE_DELIMITER,
        quote_char=False,
        escape_char=False,
        double_quote=False,
        ignore_empty_lines=False,  # an empty line is a malformed row, not nothing
        invalid_row_handler=on_invalid_row,
    )
    convert_opts = pacsv.ConvertOptions(column_types={"line": pa.binary()}, strings_can_be_null=False)
    try:
        with pa.input_stream(str(src), compression="gzip" if _is_gzip(src) else None) as stream:
            table = pacsv.read_csv(stream, read_opts, parse_opts, convert_opts)
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            return pa.chunked_array([], pa.binary()), np.zeros(0, np.int64), []
        raise ValueError(f"{src}: cannot read input: {e}") from e
    lines = table.column("line")
    return lines, _line_numbers(len(lines), [r.line for r in odd]), odd


def _line_numbers(num_kept: int, skipped: Sequence[int]) -> np.ndarray:
    """1-based line numbers of the rows pyarrow kept, given the ones it skipped."""
    total = num_kept + len(skipped)
    keep = np.ones(total, dtype=bool)
    if skipped:
        keep[np.asarray(skipped, dtype=np.int64) - 1] = False
    return np.arange(1, total + 1, dtype=np.int64)[keep]


# ----------------------------------------------------------------------------
# Parsing and validation (vectorised)
# ----------------------------------------------------------------------------


def _parse_lines(lines: pa.ChunkedArray, line_numbers: np.ndarray) -> Tuple[pa.Table, List[Reject]]:
    """Split lines into the 40 raw binary columns; return accepted rows and rejects."""
    parts = pc.split_pattern(lines, b"\t")
    ncols = _np(pc.list_value_length(parts))
    shaped = ncols == NUM_RAW_COLUMNS
    shaped_idx = np.flatnonzero(shaped)
    shaped_parts = parts.filter(pa.array(shaped))
    columns = [pc.list_element(shaped_parts, j) for j in range(NUM_RAW_COLUMNS)]

    bad = np.stack([_invalid_mask(name, col) for name, col in zip(CRITEO_RAW_COLUMNS, columns)])
    row_bad = bad.any(axis=0)

    rejects = _shape_rejects(lines, line_numbers, np.flatnonzero(~shaped), ncols)
    rejects += _value_rejects(lines, line_numbers, columns, shaped_idx, bad, row_bad)

    keep = pa.array(~row_bad)
    fields = pa.table([c.filter(keep) for c in columns], names=list(CRITEO_RAW_COLUMNS))
    return fields, rejects


def _invalid_mask(name: str, col: pa.ChunkedArray) -> np.ndarray:
    if name == LABEL:
        ok = pc.is_in(col, value_set=pa.array([b"0", b"1"], pa.binary()))
    elif name in CRITEO_DENSE_FEATURES:
        ok = pc.match_substring_regex(col, _DENSE_RE)
    else:
        ok = pc.match_substring_regex(col, _SPARSE_RE)
    return ~_np(pc.fill_null(ok, False)).astype(bool)


def _shape_rejects(
    lines: pa.ChunkedArray, line_numbers: np.ndarray, idx: np.ndarray, ncols: np.ndarray
) -> List[Reject]:
    raws = lines.take(pa.array(idx, pa.int64())).to_pylist() if len(idx) else []
    out = []
    for i, raw in zip(idx, raws):
        reason = (
            "empty line"
            if raw == b""
            else f"expected {NUM_RAW_COLUMNS} tab-separated columns, got {int(ncols[i])}"
        )
        out.append(Reject(int(line_numbers[i]), reason, raw))
    return out


def _value_rejects(
    lines: pa.ChunkedArray,
    line_numbers: np.ndarray,
    columns: List[pa.ChunkedArray],
    shaped_idx: np.ndarray,
    bad: np.ndarray,
    row_bad: np.ndarray,
) -> List[Reject]:
    local = np.flatnonzero(row_bad)
    if not len(local):
        return []
    first_bad_col = bad[:, local].argmax(axis=0)
    line_idx = shaped_idx[local]
    raws = lines.take(pa.array(line_idx, pa.int64())).to_pylist()
    out = []
    for row, col, li, raw in zip(local, first_bad_col, line_idx, raws):
        name = CRITEO_RAW_COLUMNS[col]
        value = repr(columns[col][int(row)].as_py())[1:]  # quoted, escaped, ASCII-only: no tabs
        out.append(Reject(int(line_numbers[li]), _value_reason(name, value), raw))
    return out


def _value_reason(name: str, value: str) -> str:
    if name == LABEL:
        return f"label must be 0 or 1, got {value}"
    if name in CRITEO_DENSE_FEATURES:
        return f"{name} must be an integer or empty, got {value}"
    return f"{name} must be 8 lowercase hex digits or empty, got {value}"


def _np(arr: Union[pa.Array, pa.ChunkedArray]) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
    return arr.to_numpy(zero_copy_only=False)


# ----------------------------------------------------------------------------
# Split, vocabulary, encoding
# ----------------------------------------------------------------------------


def split_bounds(num_rows: int) -> Dict[str, Tuple[int, int]]:
    """[start, stop) of train/val/test over accepted rows (reference DLRM split).

    Rows form 7 contiguous chunks as equal as possible (the first num_rows % 7
    chunks get one extra row, as numpy.array_split); chunks 1-6 are train, the
    7th is halved: first half (rounded up) val, second half test.
    """
    base, extra = divmod(num_rows, NUM_DAY_CHUNKS)
    train = sum(base + (1 if k < extra else 0) for k in range(NUM_DAY_CHUNKS - 1))
    last = num_rows - train
    val = (last + 1) // 2
    return {"train": (0, train), "val": (train, train + val), "test": (train + val, num_rows)}


def build_vocab(values: Union[pa.Array, pa.ChunkedArray], min_count: int) -> pa.Array:
    """Train values with count >= min_count, by descending count then value bytes.

    Position k in the result gets id k + 1; id 0 is reserved for rare/unseen.
    """
    if len(values) == 0:
        return pa.array([], pa.binary())
    counts = pc.value_counts(values)
    table = pa.table({"value": counts.field("values"), "count": counts.field("counts")})
    table = table.filter(pc.greater_equal(table["count"], min_count))
    order = pc.sort_indices(table, sort_keys=[("count", "descending"), ("value", "ascending")])
    return table["value"].take(order).combine_chunks()


def encode_fields(fields: pa.Table, vocabs: Dict[str, pa.Array]) -> pa.Table:
    """Raw binary columns (already validated) -> typed columns of the on-disk schema."""
    columns: List[pa.Array] = [_encode_label(fields.column(LABEL))]
    columns += [_encode_dense(fields.column(n)) for n in CRITEO_DENSE_FEATURES]
    columns += [_encode_sparse(fields.column(n), vocabs[n]) for n in CRITEO_SPARSE_FEATURES]
    return pa.Table.from_arrays(columns, schema=parquet_schema())


def _encode_label(col: pa.ChunkedArray) -> pa.Array:
    return pa.array(_np(pc.equal(col, pa.scalar(b"1"))).astype(np.int8), pa.int8())


def _encode_dense(col: pa.ChunkedArray) -> pa.Array:
    """log(max(x, 0) + 1) in float64, stored as float32; empty counts as 0."""
    filled = pc.if_else(pc.equal(pc.binary_length(col), 0), pa.scalar(b"0"), col)
    x = _np(pc.cast(filled, pa.float64())) if len(col) else np.zeros(0)
    return pa.array(np.log1p(np.maximum(x, 0.0)).astype(np.float32), pa.float32())


def _encode_sparse(col: pa.ChunkedArray, vocab: pa.Array) -> pa.Array:
    if len(col) == 0:
        return pa.array([], pa.int64())
    idx = pc.index_in(col, value_set=vocab)
    ids = _np(pc.fill_null(idx, -1)).astype(np.int64) + 1
    return pa.array(ids, pa.int64())


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------


def _write_parts(table: pa.Table, root: Path, split: str, cfg: PrepConfig) -> List[str]:
    """Write `table` as bounded part files under root/split; empty split -> no files."""
    (root / split).mkdir(parents=True, exist_ok=True)
    files = []
    row_group = min(cfg.row_group_rows, cfg.rows_per_file)
    for index, start in enumerate(range(0, table.num_rows, cfg.rows_per_file)):
        rel = part_file(split, index)
        pq.write_table(
            table.slice(start, cfg.rows_per_file),
            root / rel,
            row_group_size=row_group,
            compression="zstd",
        )
        files.append(rel)
    return files


def _write_rejects(path: Path, rejects: Sequence[Reject]) -> None:
    """TSV with header `line, reason, raw`; raw is the original bytes (may hold tabs)."""
    with open(path, "wb") as f:
        f.write(b"line\treason\traw\n")
        for r in rejects:
            f.write(f"{r.line}\t{r.reason}\t".encode("utf-8") + r.raw + b"\n")


def _check_output(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"output already exists: {out} (use --overwrite / overwrite=True to replace it)")
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"refusing to overwrite {out}: not a directory")
    if not (out / META_FILE).is_file() and any(out.iterdir()):
        # Guard against `--overwrite` pointed at the wrong (non-dataset) directory.
        raise FileExistsError(f"refusing to overwrite {out}: not empty and has no {META_FILE}")


@contextlib.contextmanager
def _staging_dir(out: Path) -> Iterator[Path]:
    """Temp dir next to `out` (same filesystem, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    _check_output(out, overwrite)  # re-check: something may have appeared meanwhile
    if out.exists():
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
