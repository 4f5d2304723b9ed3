"""Constants and meta.json handling for prepared datasets (see FORMAT.md).

This module is shared by the writer (data_prep) and the torch-side reader
(mlet_dist.data), so it must stay free of torch imports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import pyarrow as pa

from data_prep.safe_json import read_json_file

FORMAT_VERSION = 2  # what the writers write: version 1 plus multi-hot columns and per-feature pooling
READABLE_VERSIONS: tuple = (1, 2)  # version-1 datasets are single-hot, sum-pooled version-2 datasets
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
MULTI_HOT_TYPE = pa.list_(pa.int64())  # one bag of ids per row (possibly empty)
POOLINGS: tuple = ("sum", "mean")
DEFAULT_POOLING = "sum"

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
    multi_hot: Sequence[str] = (),
) -> pa.Schema:
    """Column schema of every part file, in on-disk column order; ``multi_hot`` features are
    list<int64> bags, the others one int64 id per row."""
    fields = [pa.field(label, LABEL_TYPE, nullable=False)]
    fields += [pa.field(n, DENSE_TYPE, nullable=False) for n in dense_features]
    fields += [pa.field(n, MULTI_HOT_TYPE if n in multi_hot else SPARSE_TYPE, nullable=False) for n in sparse_features]
    return pa.schema(fields)


def bag_meta(
    sparse_features: Sequence[str],
    pooling: Optional[Mapping[str, str]] = None,
    multi_hot: Optional[Mapping[str, int]] = None,
) -> Dict[str, Any]:
    """The version-2 meta.json keys every writer adds: ``pooling`` for every sparse feature
    (default sum) and ``multi_hot`` {feature: max bag size} for the list columns."""
    pooling = dict(pooling or {})
    unknown = sorted(set(pooling) - set(sparse_features))
    if unknown:
        raise ValueError(f"pooling names features that are not sparse features: {unknown}")
    for name, how in pooling.items():
        if how not in POOLINGS:
            raise ValueError(f"pooling of {name!r} must be one of {POOLINGS}, got {how!r}")
    return {
        "pooling": {f: pooling.get(f, DEFAULT_POOLING) for f in sparse_features},
        "multi_hot": {f: int(n) for f, n in (multi_hot or {}).items()},
    }


def feature_pooling(meta: Mapping[str, Any]) -> Dict[str, str]:
    """Pooling per sparse feature of a validated meta.json (version 1: all sum)."""
    given = meta.get("pooling") or {}
    return {f: given.get(f, DEFAULT_POOLING) for f in meta["sparse_features"]}


def multi_hot_features(meta: Mapping[str, Any]) -> Dict[str, int]:
    """{feature: max bag size} of the list columns of a validated meta.json (version 1: none)."""
    return {f: int(n) for f, n in (meta.get("multi_hot") or {}).items()}


def part_file(split: str, index: int) -> str:
    """Relative path (as stored in meta.json) of the index-th part file of a split."""
    return f"{split}/part-{index:05d}.parquet"


def source_label(names: Sequence[str], unit: str = "files") -> str:
    """meta.json's one-line ``source``: the input's name, or the first and last of several."""
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} {unit})"


@dataclass
class PreparedMeta:
    """What every writer (raw preparation, converters, synthetic, planted) records in meta.json,
    typed in one place so that the writers cannot drift apart in the keys they share. Defaults are
    those of a dataset whose ids were given, not counted (nothing hashed, nothing rejected).
    The optional keys are left out of meta.json when None; ``extra`` holds a writer's own sections."""

    dataset: str
    source: str
    sources: List[str]
    dense_features: Sequence[str]
    sparse_features: Sequence[str]
    table_sizes: Mapping[str, int]
    splits: Mapping[str, Mapping[str, Any]]  # split -> {"rows": n, "files": [...]}
    split: Mapping[str, Any]  # how rows were assigned to splits
    rows_read: int
    label: str = LABEL
    min_count: Optional[int] = 1
    hash_size: Optional[int] = None
    hashed_features: Mapping[str, str] = field(default_factory=dict)  # feature -> why it is hashed
    rows_rejected: int = 0
    rows_rejected_by_kind: Mapping[str, int] = field(default_factory=dict)
    rejects_file: Optional[str] = None
    pooling: Optional[Mapping[str, str]] = None  # feature -> sum|mean (default sum)
    multi_hot: Optional[Mapping[str, int]] = None  # list column -> max bag size
    rows_per_source: Optional[Mapping[str, int]] = None
    count_memory_mb: Optional[float] = None
    id_histograms: Optional[Mapping[str, Any]] = None
    dense_transform: Optional[str] = None
    sparse_transform: Optional[str] = None
    vocabulary: Optional[Mapping[str, Any]] = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # a writer's own sections (planted, synthetic, ...)

    def to_dict(self) -> Dict[str, Any]:
        """meta.json's content (write_meta sorts the keys, so their order here does not matter)."""
        meta: Dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "source": self.source,
            "sources": list(self.sources),
            "label": self.label,
            "dense_features": list(self.dense_features),
            "sparse_features": list(self.sparse_features),
            "table_sizes": {name: int(size) for name, size in self.table_sizes.items()},
            "min_count": self.min_count,
            "hash_size": self.hash_size,
            "hashed_features": dict(sorted(self.hashed_features.items())),
            "splits": dict(self.splits),
            "split": dict(self.split),
            "rows_read": int(self.rows_read),
            "rows_rejected": int(self.rows_rejected),
            "rows_rejected_by_kind": dict(sorted(self.rows_rejected_by_kind.items())),
            "rejects_file": self.rejects_file,
            **bag_meta(self.sparse_features, self.pooling, self.multi_hot),
        }
        optional = {
            "rows_per_source": None
            if self.rows_per_source is None
            else {name: int(n) for name, n in self.rows_per_source.items()},
            "count_memory_mb": self.count_memory_mb,
            "id_histograms": self.id_histograms,
            "dense_transform": self.dense_transform,
            "sparse_transform": self.sparse_transform,
            "vocabulary": self.vocabulary,
        }
        meta.update({key: value for key, value in optional.items() if value is not None})
        meta.update(self.extra)
        return meta


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


def meta_file(path: PathLike) -> Path:
    """The meta.json of ``path``: the dataset directory's, or ``path`` itself when it is a file."""
    p = Path(path)
    return p / META_FILE if p.is_dir() else p


def read_meta(path: PathLike) -> Dict[str, Any]:
    """Load and validate meta.json; `path` is the dataset directory or the file itself.

    Raises FileNotFoundError if it is missing and ValueError (naming the file)
    if the version is unsupported or the content is inconsistent, so that a
    bad dataset fails at start-up rather than deep inside training.
    """
    p = Path(path)
    meta_path = meta_file(p)
    if looks_raw(p):
        raise ValueError(raw_file_message(p, "--data"))
    if not meta_path.is_file():
        raise FileNotFoundError(f"dataset metadata not found: {meta_path}")
    meta = read_json_file(meta_path, "dataset metadata")  # bounded: size, nesting (safe_json)
    validate_meta(meta, meta_path)
    return meta


def validate_meta(meta: Any, where: PathLike) -> None:
    """Raise ValueError("<where>: <problem>") unless ``meta`` is a readable meta.json's content.
    read_meta's check, also used on JSON that arrived by another route (mlet-plan --spec)."""

    def fail(msg: str) -> None:
        raise ValueError(f"{where}: {msg}")

    if not isinstance(meta, dict):
        fail("top level must be a JSON object")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        fail(
            f"unsupported format_version {version!r} (this code reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
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
    _validate_bags(meta, fail)
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


def _validate_bags(meta: Dict[str, Any], fail: Any) -> None:
    """Version 2's ``pooling`` and ``multi_hot``: known features, known poolings, sizes >= 1."""
    sparse = set(meta["sparse_features"])
    pooling = meta.get("pooling", {})
    multi_hot = meta.get("multi_hot", {})
    if meta["format_version"] == 1 and ("multi_hot" in meta and multi_hot):
        fail("multi_hot needs format_version 2")
    if not isinstance(pooling, dict) or not isinstance(multi_hot, dict):
        fail("pooling and multi_hot must be objects {feature: ...}")
    for name, how in pooling.items():
        if name not in sparse or how not in POOLINGS:
            fail(f"pooling[{name!r}] = {how!r}: needs a sparse feature and one of {', '.join(POOLINGS)}")
    for name, size in multi_hot.items():
        if name not in sparse or not isinstance(size, int) or isinstance(size, bool) or size < 1:
            fail(f"multi_hot[{name!r}] = {size!r}: needs a sparse feature and a max bag size >= 1")


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
