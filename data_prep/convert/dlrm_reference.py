"""The reference DLRM's preprocessed Criteo -> our format (`mlet-prep from-dlrm-npz FILE OUT`,
`mlet-prep from-dlrm-bin DIR OUT`).

Layouts as read in facebookresearch/dlrm at 090956ee:

* ``data_utils.py`` (getCriteoAdData / concatCriteoAdData) writes ``<name>_processed.npz``
  (``kaggleAdDisplayChallenge_processed.npz``, ``terabyte_processed.npz``) with ``X_int``
  (int32 [rows, 13], raw counts, negatives set to 0), ``X_cat`` (**float64** [rows, 26]: ids
  contiguous per feature, written into ``np.zeros``' default dtype by processCriteoAdData; int
  fixtures are taken too), ``y`` (int32 [rows]) and ``counts`` ([26], ids per feature), all
  ``np.savez_compressed``, and ``<raw>_day_count.npz`` with ``total_per_file`` (rows per day).
  A float id that is not a whole number, or is beyond MAX_TABLE_ROWS, is refused. ``dlrm_data_pytorch.py``'s
  CriteoDataset trains on all days but the last and splits the last with
  ``np.array_split(rows, 2)``: **test** the first ceil(rows/2), **val** the rest.
* ``data_loader_terabyte.py`` (numpy_to_binary, CriteoBinDataset) writes fixed-width records of
  40 little-endian int32: label, 13 dense (raw counts), 26 ids; ``dlrm_data_pytorch.py`` names the
  files ``<processed>_{train,val,test}.bin`` (``terabyte_processed_train.bin``; the script's own
  ``_preprocess`` writes ``{train,val,test}_data.bin``); test.bin is the last day's first
  ceil(rows/2), val.bin the rest; the table sizes are in ``<raw>_fea_count.npz`` (``counts``).

Dense transform: both keep **raw** counts and the reference applies ``log(x + 1)`` when it loads
a batch (``_transform_features``, ``collate_wrapper_criteo_offset``). That is our transform
(``log(max(x, 0) + 1)``, FORMAT.md), so the converter applies it **once** and stores the result;
the trainer reads it as is. A float ``X_int`` is refused: it would have been transformed already.
``--max-ind-range N`` does what the reference's flag does at load time (ids modulo N, tables
capped at N).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa

from data_prep.dataset_format import CRITEO_DENSE_FEATURES, CRITEO_SPARSE_FEATURES, SPLITS, parquet_schema
from data_prep.convert.common import (
    checked_ids,
    dense_log,
    first_bad,
    npz_arrays,
    regular_file,
    table_sizes_from,
    write_converted,
)
from data_prep.spec import PrepConfig, PrepResult
from data_prep.staging import check_output

PathLike = Union[str, Path]
BLOCK_ROWS = 1 << 17
RECORD_INTS = 1 + len(CRITEO_DENSE_FEATURES) + len(CRITEO_SPARSE_FEATURES)  # 40 int32 per .bin record
DENSE_NOTE = (
    "log(max(x, 0) + 1) of the reference's raw counts, applied once here (the reference applies log(x + 1) "
    "at load time); not to be transformed again"
)


@dataclasses.dataclass
class Piece:
    """Rows [lo, hi) of one source file that go to one split."""

    path: Path
    split: str
    lo: int
    hi: int
    labels: np.ndarray
    dense: np.ndarray  # raw integer counts
    ids: np.ndarray  # [rows, 26]


def _scan(p: Piece, modulo: Optional[int], sizes: Optional[np.ndarray]) -> np.ndarray:
    """Validate one piece block by block (one line at the first bad row); per-feature max ids."""
    max_ids = np.full(len(CRITEO_SPARSE_FEATURES), -1, np.int64)
    for lo in range(p.lo, p.hi, BLOCK_ROWS):
        hi = min(lo + BLOCK_ROWS, p.hi)
        labels = np.asarray(p.labels[lo:hi])
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            row = first_bad(bad)
            raise ValueError(f"{p.path}: row {lo + row}: label {labels[row].item()} is not 0 or 1")
        ids = _ids(p, lo, hi)
        if modulo:
            ids = ids % modulo
        if sizes is not None and (ids >= sizes).any():
            row = first_bad((ids >= sizes).any(axis=1))
            col = first_bad(ids[row] >= sizes)
            raise ValueError(
                f"{p.path}: row {lo + row}: {CRITEO_SPARSE_FEATURES[col]} id {ids[row, col]} is outside "
                f"its table of {sizes[col]} ids"
            )
        if len(ids):
            max_ids = np.maximum(max_ids, ids.max(axis=0))
    return max_ids


def _ids(p: Piece, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of a piece's ids as int64, checked in the file's dtype (whole numbers when float)."""
    return checked_ids(p.ids[lo:hi], p.path, lo, CRITEO_SPARSE_FEATURES.__getitem__)


def _blocks(pieces: List[Piece], schema: pa.Schema, modulo: Optional[int]) -> Iterator[Tuple[str, pa.Table]]:
    for p in pieces:
        for lo in range(p.lo, p.hi, BLOCK_ROWS):
            hi = min(lo + BLOCK_ROWS, p.hi)
            dense = dense_log(p.dense[lo:hi])
            ids = _ids(p, lo, hi)
            if modulo:
                ids = ids % modulo
            cols = [pa.array(np.asarray(p.labels[lo:hi]).astype(np.int8))]
            cols += [pa.array(dense[:, j]) for j in range(dense.shape[1])]
            cols += [pa.array(ids[:, j]) for j in range(ids.shape[1])]
            yield p.split, pa.Table.from_arrays(cols, schema=schema)


def _convert(
    pieces: List[Piece],
    out: Path,
    cfg: PrepConfig,
    dataset: str,
    counts: Optional[np.ndarray],
    counts_source: str,
    modulo: Optional[int],
    rows_per_source: Dict[str, int],
    split: Dict[str, Any],
) -> PrepResult:
    given = None if counts is None else np.minimum(counts, modulo) if modulo else counts
    max_ids = np.full(len(CRITEO_SPARSE_FEATURES), -1, np.int64)
    for p in pieces:  # check everything before writing anything
        max_ids = np.maximum(max_ids, _scan(p, modulo, given))
    sizes = table_sizes_from(CRITEO_SPARSE_FEATURES, max_ids, None if given is None else list(given), counts_source)
    schema = parquet_schema()
    how = f"counts from {counts_source}" if counts is not None else "max id + 1"
    return write_converted(
        out,
        cfg,
        schema,
        _blocks(pieces, schema, modulo),
        dataset=dataset,
        sources=list(rows_per_source),
        rows_per_source=rows_per_source,
        dense=CRITEO_DENSE_FEATURES,
        sparse=CRITEO_SPARSE_FEATURES,
        table_sizes=sizes,
        split=split,
        dense_transform=DENSE_NOTE,
        sparse_transform=f"ids as in the files{f' modulo --max-ind-range {modulo}' if modulo else ''}; "
        f"table_sizes = {how}{f' capped at {modulo}' if modulo else ''}",
    )


def _counts(path: Path) -> np.ndarray:
    counts = npz_arrays(path).get("counts")
    if counts is None:
        raise ValueError(f"{path}: no 'counts' array (ids per feature; data_utils.py writes <raw>_fea_count.npz)")
    return _counts_of(counts, path)


def _one_beside(directory: Path, pattern: str, flag: str) -> Optional[Path]:
    found = sorted(directory.glob(pattern))
    if len(found) > 1:
        raise ValueError(
            f"{directory}: several {pattern} files ({', '.join(p.name for p in found)}); choose one with {flag}"
        )
    return found[0] if found else None


# -- processed .npz ----------------------------------------------------------------------------


def prepare_dlrm_npz(
    src: PathLike,
    out: PathLike,
    config: Optional[PrepConfig] = None,
    day_count: Optional[PathLike] = None,
    max_ind_range: Optional[int] = None,
    **overrides: Any,
) -> PrepResult:
    """Convert the reference DLRM's ``*_processed.npz`` (+ ``*_day_count.npz``) into a prepared dataset."""
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    path, out_path = Path(src), Path(out)
    if not path.is_file():
        raise FileNotFoundError(f"not a file: {path} (the reference DLRM's *_processed.npz)")
    check_output(out_path, cfg.overwrite)
    arrays = npz_arrays(path)
    missing = [k for k in ("X_int", "X_cat", "y", "counts") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing} (data_utils.py writes X_int, X_cat, y, counts)")
    x_int, x_cat, y = arrays["X_int"], arrays["X_cat"], arrays["y"]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if not np.issubdtype(x_int.dtype, np.integer):
        raise ValueError(
            f"{path}: X_int is {x_int.dtype}: the reference's processed file holds raw integer counts "
            "(a float X_int was transformed already and would be logged twice)"
        )
    for name, arr, width in (
        ("X_int", x_int, len(CRITEO_DENSE_FEATURES)),
        ("X_cat", x_cat, len(CRITEO_SPARSE_FEATURES)),
    ):
        if arr.ndim != 2 or arr.shape[1] != width or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(
                f"{path}: {name} has shape {arr.shape} dtype {arr.dtype}, expected numbers [rows, {width}]"
            )
        if len(arr) != len(y):
            raise ValueError(f"{path}: rows differ: {name} {len(arr)}, y {len(y)}")
    counts = _counts_of(arrays["counts"], path)
    day_path = Path(day_count) if day_count is not None else _one_beside(path.parent, "*_day_count.npz", "--day-count")
    if day_path is None:
        raise ValueError(
            f"{path}: no *_day_count.npz beside it (data_utils.py writes <raw>_day_count.npz next to "
            "the raw data); pass --day-count FILE to split the days as the reference does"
        )
    per_day = npz_arrays(day_path).get("total_per_file")
    if per_day is None or per_day.ndim != 1 or len(per_day) < 2 or per_day.min() < 0:
        raise ValueError(f"{day_path}: expected 'total_per_file', rows per day (at least 2 days)")
    if int(per_day.sum()) != len(y):
        raise ValueError(f"{day_path}: total_per_file adds up to {int(per_day.sum())} rows, {path.name} has {len(y)}")
    train_end = int(per_day[:-1].sum())
    test_end = train_end + (int(per_day[-1]) + 1) // 2  # np.array_split(last day, 2): test first
    bounds = {"train": (0, train_end), "test": (train_end, test_end), "val": (test_end, len(y))}
    pieces = [Piece(path, s, *bounds[s], y, x_int, x_cat) for s in SPLITS]
    return _convert(
        pieces,
        out_path,
        cfg,
        "dlrm-npz",
        counts,
        f"{path.name} 'counts'",
        max_ind_range,
        {path.name: len(y)},
        {
            "method": f"days of {day_path.name}",
            "train_days": len(per_day) - 1,
            "val_test": "last day halved as the reference: test the first ceil(rows/2), val the rest",
        },
    )


def _counts_of(counts: np.ndarray, path: Path) -> np.ndarray:
    if (
        counts.shape != (len(CRITEO_SPARSE_FEATURES),)
        or not np.issubdtype(counts.dtype, np.integer)
        or counts.min() < 1
    ):
        raise ValueError(f"{path}: counts has shape {counts.shape} dtype {counts.dtype}, expected 26 integers >= 1")
    return np.asarray(counts, np.int64)


# -- terabyte_processed_*.bin ------------------------------------------------------------------

_BIN = (re.compile(r"(.+)_(train|val|test)\.bin$"), re.compile(r"(train|val|test)_data\.bin$"))


def find_bins(src: Path) -> Dict[str, Path]:
    """split -> file: ``<prefix>_{train,val,test}.bin`` or ``{train,val,test}_data.bin``."""
    if not src.is_dir():
        raise FileNotFoundError(f"not a directory of reference DLRM .bin files: {src}")
    sets: Dict[str, Dict[str, Path]] = {}
    for p in sorted(src.iterdir()):
        if (m := _BIN[1].match(p.name)) is not None:
            sets.setdefault("{split}_data.bin", {})[m.group(1)] = p
        elif (m := _BIN[0].match(p.name)) is not None:
            sets.setdefault(f"{m.group(1)}_{{split}}.bin", {})[m.group(2)] = p
    if not sets:
        raise ValueError(f"{src}: no terabyte_processed_{{train,val,test}}.bin (or {{train,val,test}}_data.bin) files")
    if len(sets) > 1:
        raise ValueError(f"{src}: more than one set of .bin files ({', '.join(sorted(sets))}); keep one per directory")
    ((pattern, files),) = sets.items()
    missing = [pattern.format(split=s) for s in SPLITS if s not in files]
    if missing:
        raise FileNotFoundError(f"{src / missing[0]} is missing (the reference writes train, val and test .bin)")
    return files


def _records(path: Path) -> np.ndarray:
    size = regular_file(path).stat().st_size  # a FIFO or directory would read as an empty split
    record = RECORD_INTS * 4
    if size % record:
        raise ValueError(
            f"{path}: row {size // record}: the file ends {size % record} bytes into a record "
            f"({size} bytes is not a multiple of {record}: {RECORD_INTS} int32 per row); truncated?"
        )
    if size == 0:
        return np.zeros((0, RECORD_INTS), np.int32)
    return np.memmap(path, dtype="<i4", mode="r", shape=(size // record, RECORD_INTS))


def prepare_dlrm_bin(
    src: PathLike,
    out: PathLike,
    config: Optional[PrepConfig] = None,
    counts: Optional[PathLike] = None,
    max_ind_range: Optional[int] = None,
    **overrides: Any,
) -> PrepResult:
    """Convert the reference DLRM's train/val/test .bin files into a prepared dataset."""
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    root, out_path = Path(src), Path(out)
    files = find_bins(root)
    check_output(out_path, cfg.overwrite)
    counts_path = Path(counts) if counts is not None else _one_beside(root, "*_fea_count.npz", "--counts")
    sizes = _counts(counts_path) if counts_path is not None else None
    pieces: List[Piece] = []
    for split in SPLITS:
        rec = _records(files[split])
        pieces.append(Piece(files[split], split, 0, len(rec), rec[:, 0], rec[:, 1:14], rec[:, 14:]))
    return _convert(
        pieces,
        out_path,
        cfg,
        "dlrm-bin",
        sizes,
        counts_path.name if counts_path else "",
        max_ind_range,
        {p.path.name: p.hi for p in pieces},
        {"method": "reference .bin files", "files": {s: files[s].name for s in SPLITS}},
    )
