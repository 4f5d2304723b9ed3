"""What the converters from other tools' files share (torchrec-npy, mlperf-multihot, dlrm-npz,
dlrm-bin): safe array loading, the one dense transform, table sizes from the ids, and one place
that stages, writes, describes (meta.json) and publishes the converted dataset.

Each converter checks its whole input before it calls ``write_converted``, so a bad file stops
the conversion before anything is written; ``write_converted`` itself publishes only at the end
(staging directory + rename), so a crash while writing leaves no partial OUT either.
"""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from data_prep.dataset_format import SPLITS, PreparedMeta, source_label, write_meta
from data_prep.spec import PrepConfig, PrepResult
from data_prep.staging import check_output, publish, staging_dir
from data_prep.writers import SplitWriter, written_splits

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # zip local file header: 30 bytes, then name and extra
_LOCAL_MAGIC = 0x04034B50
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data by more than ~1032:1, so a bigger claim is a lie

# The most rows a converted table may have. Real vocabularies stay far below it (Criteo Terabyte's
# largest feature, unhashed, has 2.9e8 ids); raw 32-bit hashes, which TorchRec's tsv_to_npys keeps
# and hashes only at load time, reach 4.29e9. Ids at or beyond it are refused, not published.
MAX_TABLE_ROWS = 1 << 31
INT64_MAX = int(np.iinfo(np.int64).max)


def regular_file(path: Path) -> Path:
    """``path`` itself when it is (a symlink to) a regular file; a FIFO, a directory, a dangling
    symlink or a symlink loop is an error naming it (reading one would hang, fail later with a
    traceback, or read as an empty split)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ValueError(f"{path}: missing{' (a dangling symlink)' if path.is_symlink() else ''}") from None
    except OSError as err:  # ELOOP and friends
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file (a directory, FIFO or device)")
    return path


def load_npy(path: Path) -> np.ndarray:
    """A plain numeric .npy array, memory-mapped; never unpickled."""
    regular_file(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:  # an object array, or not an .npy file
        raise ValueError(f"{path}: not a plain numeric .npy array ({err})") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: an .npz archive where a single .npy array was expected")
    return arr


def npz_arrays(path: Path) -> Dict[str, np.ndarray]:
    """Every member of an .npz archive by name (without ``.npy``). Stored (uncompressed) members,
    as ``np.savez`` writes them, are memory-mapped in place, so a day of the 4 TB MLPerf set
    need not fit in memory; compressed members (``np.savez_compressed``) are read whole."""
    regular_file(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: not an .npz archive ({err})") from None
    out: Dict[str, np.ndarray] = {}
    size = path.stat().st_size
    with open(path, "rb") as f:
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{path}: member {info.filename!r} is not an .npy array")
            key = info.filename[: -len(".npy")]
            if info.compress_type != zipfile.ZIP_STORED:
                _check_packed_member(path, info)
                with np.load(path, allow_pickle=False) as npz:
                    out[key] = _numeric(npz[key], path, key)
                continue
            f.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if fields[0] != _LOCAL_MAGIC:
                raise ValueError(f"{path}: member {info.filename!r}: bad zip local header")
            f.seek(info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10])
            shape, fortran, dtype = _npy_header(f, path, info)
            _numeric(np.empty(0, dtype), path, key)
            if f.tell() + int(np.prod(shape)) * dtype.itemsize > size:
                raise ValueError(f"{path}: member {info.filename!r} {shape} runs past the end of the file (truncated?)")
            if int(np.prod(shape)) == 0:
                out[key] = np.empty(shape, dtype)
            else:
                out[key] = np.memmap(
                    path, dtype=dtype, mode="r", offset=f.tell(), shape=shape, order="F" if fortran else "C"
                )
    return out


def _npy_header(f: Any, path: Path, info: zipfile.ZipInfo) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy member ``f`` is positioned at; one ValueError line."""
    try:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return reader(f)
    except ValueError as err:
        raise ValueError(f"{path}: member {info.filename!r}: not an .npy array ({err})") from None


def _check_packed_member(path: Path, info: zipfile.ZipInfo) -> None:
    """A compressed member's .npy header against the bytes the member holds, before numpy
    allocates the declared shape: a member that declares 1e12 elements is refused here."""
    with zipfile.ZipFile(path) as zf, zf.open(info) as f:
        shape, _, dtype = _npy_header(f, path, info)
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = min(info.file_size, info.compress_size * _DEFLATE_MAX_RATIO)
    if declared > held:
        raise ValueError(
            f"{path}: member {info.filename!r} declares {shape} ({declared:,} bytes) but holds at most "
            f"{held:,} bytes (damaged or hostile archive)"
        )


def _numeric(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{path}: member {key!r} has dtype {arr.dtype}, expected numbers")
    return arr


def first_bad(mask: npt.ArrayLike) -> int:
    """Index of the first True: a refusal names one row (or column), not a count."""
    return int(np.flatnonzero(mask)[0])


def dense_log(raw: np.ndarray) -> np.ndarray:
    """Our dense transform, ``log(max(x, 0) + 1)`` in float64 stored as float32 (FORMAT.md), for
    sources that keep raw integer counts (the reference DLRM's .npz and .bin)."""
    return np.log1p(np.maximum(np.asarray(raw, np.float64), 0.0)).astype(np.float32)


def checked_dense(dense: np.ndarray, where: Path, start: int) -> np.ndarray:
    """Dense values as stored (float32), refusing a row with a value that is not finite there:
    NaN, inf, or a float64 such as 1e300 that the float32 cast turns into inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        stored = np.asarray(dense, np.float32)
    bad = ~np.isfinite(stored).all(axis=1)
    if bad.any():
        row = first_bad(bad)
        value = np.asarray(dense[row])[first_bad(~np.isfinite(stored[row]))].item()
        why = "does not fit float32" if np.isfinite(value) else "is not finite"
        raise ValueError(f"{where}: row {start + row}: dense value {value!r} {why}")
    return stored


def checked_ids(ids: np.ndarray, where: Path, start: int, feature: Callable[[int], str]) -> np.ndarray:
    """Ids [rows, k] as int64, refused in their own dtype before the cast: a negative id, a
    uint64 beyond int64 (the cast would make it negative), a float that is not a whole number
    (the reference DLRM writes its ids as float64) or one beyond MAX_TABLE_ROWS."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        checks = [
            (~np.isfinite(arr) | (arr != np.floor(arr)), "is not a whole number"),
            (arr >= MAX_TABLE_ROWS, f"is beyond {MAX_TABLE_ROWS:,} ids"),
        ]
    elif np.issubdtype(arr.dtype, np.unsignedinteger):
        checks = [(arr > INT64_MAX, "does not fit int64")]
    else:
        checks = []
    for bad, why in [(arr < 0, ""), *checks]:
        if bad.any():
            row = first_bad(bad.any(axis=1))
            col = first_bad(bad[row])
            value = arr[row, col].item()
            text = f"negative id {value} in {feature(col)}" if not why else f"{feature(col)} id {value!r} {why}"
            raise ValueError(f"{where}: row {start + row}: {text}")
    return arr.astype(np.int64)


def table_sizes_from(
    features: Sequence[str], max_ids: np.ndarray, given: Optional[Sequence[int]], source: str, hint: str = ""
) -> List[int]:
    """max id + 1 per feature (at least 1), or the given sizes after checking every id fits; no
    table beyond MAX_TABLE_ROWS. ``hint`` ends the message of an id that does not fit."""
    sizes = [int(m) + 1 if m >= 0 else 1 for m in max_ids]
    tail = f" ({hint})" if hint else ""
    if given is None:
        for f, n in zip(features, sizes):
            if n > MAX_TABLE_ROWS:
                raise ValueError(
                    f"feature {f}: id {n - 1} in {source} would need a table of {n:,} rows, more than "
                    f"{MAX_TABLE_ROWS:,}{tail}"
                )
        return sizes
    if len(given) != len(sizes):
        raise ValueError(f"need {len(sizes)} table sizes, got {len(given)}")
    for f, m, n in zip(features, max_ids, given):
        if n > MAX_TABLE_ROWS:
            raise ValueError(f"feature {f}: table size {int(n):,} is more than {MAX_TABLE_ROWS:,} rows")
        if m >= n:
            raise ValueError(f"feature {f}: id {int(m)} in {source} is outside the given table size {int(n)}{tail}")
    return [int(n) for n in given]


def day_blocks(
    day_rows: Sequence[int], block_rows: int, make_table: Callable[[int, int, int], pa.Table]
) -> Iterator[Tuple[str, pa.Table]]:
    """(split, table) in day order for day files split the TorchRec / MLPerf way: every day but the
    last is train, the last is halved, val the first ceil(rows / 2). ``make_table(day, lo, hi)``
    builds rows [lo, hi) of a day."""
    last_val = (day_rows[-1] + 1) // 2
    for day, rows in enumerate(day_rows):
        for lo in range(0, rows, block_rows):
            hi = min(lo + block_rows, rows)
            table = make_table(day, lo, hi)
            if day < len(day_rows) - 1:
                yield "train", table
                continue
            cut = min(max(last_val - lo, 0), hi - lo)
            yield "val", table.slice(0, cut)
            yield "test", table.slice(cut)


def range_blocks(
    bounds: Mapping[str, Tuple[int, int]], block_rows: int, make_table: Callable[[int, int], pa.Table]
) -> Iterator[Tuple[str, pa.Table]]:
    """(split, table) for one file cut into [lo, hi) split ranges, in row order (whatever the
    order of the splits). ``make_table(lo, hi)`` builds rows [lo, hi)."""
    for split, (lo, hi) in sorted(bounds.items(), key=lambda item: item[1]):
        for start in range(lo, hi, block_rows):
            yield split, make_table(start, min(start + block_rows, hi))


def bag_column(ids: np.ndarray) -> pa.Array:
    """Fixed-width bags [rows, k] -> a list<int64> column (every bag k ids)."""
    rows, width = ids.shape
    offsets = np.arange(0, rows * width + 1, width, dtype=np.int32)  # blocks are far below 2**31 ids
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.ascontiguousarray(ids, np.int64).reshape(-1)))


def write_converted(
    out: Path,
    cfg: PrepConfig,
    schema: pa.Schema,
    blocks: Iterable[Tuple[str, pa.Table]],
    *,
    dataset: str,
    sources: Sequence[str],
    rows_per_source: Mapping[str, int],
    source_unit: str = "files",
    dense: Sequence[str],
    sparse: Sequence[str],
    table_sizes: Sequence[int],
    split: Dict[str, Any],
    dense_transform: str,
    sparse_transform: str,
    multi_hot: Optional[Mapping[str, int]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> PrepResult:
    """Write (split, table) blocks in order, then meta.json with the row accounting, then publish.
    Nothing is rejected at this stage (the converters refuse bad input before calling this)."""
    check_output(out, cfg.overwrite)
    with staging_dir(out) as tmp:
        writers = {s: SplitWriter(tmp, s, schema, cfg) for s in SPLITS}
        for name, table in blocks:
            if table.num_rows:
                writers[name].write(table)
        for w in writers.values():
            w.close()
        names = list(sources)
        meta = PreparedMeta(
            dataset=dataset,
            source=source_label(names, source_unit),
            sources=names,
            dense_features=dense,
            sparse_features=sparse,
            table_sizes=dict(zip(sparse, table_sizes)),
            splits=written_splits(writers),
            split=split,
            rows_read=sum(rows_per_source.values()),
            rows_per_source=rows_per_source,
            dense_transform=dense_transform,
            sparse_transform=sparse_transform,
            multi_hot=multi_hot,
            extra=dict(extra or {}),
        ).to_dict()
        written = sum(w.rows for w in writers.values())
        if written != meta["rows_read"]:  # every row read is written: nothing dropped on the way
            raise AssertionError(f"wrote {written} rows of {meta['rows_read']} read")
        write_meta(tmp, meta)
        publish(tmp, out, cfg.overwrite)
    return PrepResult(out_dir=out, meta=meta)
