"""Constants and meta.json handling for prepared datasets (see FORMAT.md).

This module is shared by the writer (data_prep) and the torch-side reader
(mlet_dist.data), so it must stay free of torch imports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Union

import pyarrow as pa

FORMAT_VERSION = 1
META_FILE = "meta.json"
REJECTS_FILE = "rejects.tsv"
DATASET_CRITEO_KAGGLE = "criteo-kaggle"
DATASET_CRITEO_TERABYTE = "criteo-terabyte"
DATASET_AVAZU = "avazu"
DATASET_SYNTHETIC = "synthetic"

LABEL = "label"
CRITEO_DENSE_FEATURES: tuple = tuple(f"I{i}" for i in range(1, 14))
CRITEO_SPARSE_FEATURES: tuple = tuple(f"C{i}" for i in range(1, 27))
SPLITS: tuple = ("train", "val", "test")

# Raw Kaggle TSV column order: label, I1..I13, C1..C26.
CRITEO_RAW_COLUMNS: tuple = (LABEL,) + CRITEO_DENSE_FEATURES + CRITEO_SPARSE_FEATURES

LABEL_TYPE = pa.int8()
DENSE_TYPE = pa.float32()
SPARSE_TYPE = pa.int64()

REQUIRED_META_KEYS: tuple = (
    "format_version",
    "dataset",
    "source",
    "label",
    "dense_features",
    "sparse_features",
    "table_sizes",
    "min_count",
    "splits",
    "rows_read",
    "rows_rejected",
    "rejects_file",
)

PathLike = Union[str, Path]


def parquet_schema(
    dense_features: Sequence[str] = CRITEO_DENSE_FEATURES,
    sparse_features: Sequence[str] = CRITEO_SPARSE_FEATURES,
    label: str = LABEL,
) -> pa.Schema:
    """Column schema of every part file, in on-disk column order."""
    fields = [pa.field(label, LABEL_TYPE, nullable=False)]
    fields += [pa.field(n, DENSE_TYPE, nullable=False) for n in dense_features]
    fields += [pa.field(n, SPARSE_TYPE, nullable=False) for n in sparse_features]
    return pa.schema(fields)


def part_file(split: str, index: int) -> str:
    """Relative path (as stored in meta.json) of the index-th part file of a split."""
    return f"{split}/part-{index:05d}.parquet"


def write_meta(out_dir: PathLike, meta: Mapping[str, Any]) -> Path:
    """Write meta.json with sorted keys so identical inputs give identical bytes."""
    path = Path(out_dir) / META_FILE
    path.write_text(json.dumps(meta, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return path


def raw_file_message(path: PathLike, flag: str) -> str:
    """What to say when a raw data file is given where a prepared dataset is expected (the usual
    first mistake: --data train.txt). The fix names the file as the input and OUTDIR as the output."""
    return (
        f"{flag} {path} is a raw data file, not a prepared dataset: run "
        f"`mlet-prep {DATASET_CRITEO_KAGGLE} {path} OUTDIR` (or {DATASET_CRITEO_TERABYTE}, {DATASET_AVAZU}: "
        f"see mlet-prep --help) and pass {flag} OUTDIR"
    )


def looks_raw(path: PathLike) -> bool:
    """A file that is not a meta.json-like JSON file: TSV/CSV text, gzip, parquet..."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix == ".json":
        return False
    with open(p, "rb") as f:
        head = f.read(64).lstrip()
    return not head.startswith(b"{")


def read_meta(path: PathLike) -> Dict[str, Any]:
    """Load and validate meta.json; `path` is the dataset directory or the file itself.

    Raises FileNotFoundError if it is missing and ValueError (naming the file)
    if the version is unsupported or the content is inconsistent, so that a
    bad dataset fails at start-up rather than deep inside training.
    """
    p = Path(path)
    meta_path = p / META_FILE if p.is_dir() else p
    if looks_raw(p):
        raise ValueError(raw_file_message(p, "--data"))
    if not meta_path.is_file():
        raise FileNotFoundError(f"dataset metadata not found: {meta_path}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: invalid JSON: {e}") from e
    _validate_meta(meta, meta_path)
    return meta


def _validate_meta(meta: Any, where: Path) -> None:
    def fail(msg: str) -> None:
        raise ValueError(f"{where}: {msg}")

    if not isinstance(meta, dict):
        fail("top level must be a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        fail(f"unsupported format_version {version!r} (this code reads version {FORMAT_VERSION})")
    missing = [k for k in REQUIRED_META_KEYS if k not in meta]
    if missing:
        fail(f"missing required keys: {', '.join(missing)}")
    for key in ("dense_features", "sparse_features"):
        if not _is_str_list(meta[key]):
            fail(f"{key} must be a list of strings")
    sizes = meta["table_sizes"]
    if not isinstance(sizes, dict):
        fail("table_sizes must be an object")
    for name in meta["sparse_features"]:
        size = sizes.get(name)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            fail(f"table_sizes[{name!r}] must be an integer >= 1, got {size!r}")
    splits = meta["splits"]
    if not isinstance(splits, dict):
        fail("splits must be an object")
    for split in SPLITS:
        info = splits.get(split)
        if not isinstance(info, dict):
            fail(f"splits is missing {split!r}")
        rows = info.get("rows")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            fail(f"splits[{split!r}].rows must be an integer >= 0, got {rows!r}")
        if not _is_str_list(info.get("files")):
            fail(f"splits[{split!r}].files must be a list of strings")


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)

