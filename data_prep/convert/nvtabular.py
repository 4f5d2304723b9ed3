"""NVTabular parquet -> our format (`mlet-prep nvtabular DIR OUT`).

NVTabular / Merlin workflows (torchrec's ``datasets/scripts/nvt``, HugeCTR's and Merlin's Criteo
examples) leave one directory per split (``train/``, ``validation/`` or ``valid/`` or ``val/``,
and optionally ``test/``), each with ``part_*.parquet`` files holding ``label``, ``int_0..``
(dense, already transformed by the workflow: torchrec's is ``log(x + 3)``, missing -> 0) and
``cat_0..`` (ids already contiguous from ``Categorify``), plus ``schema.pbtxt`` (TensorFlow
metadata text format) whose ``int_domain { max: M }`` declares each categorical's cardinality
M + 1. Without the schema the table sizes would be guessed from the data, which is how
NVTabular parquet used to need a hand-written meta.json. A multi-hot ``cat_*`` is a parquet list
column (list<int>, one bag of ids per row) declared in the schema with ``value_count { min max }``
and the ``list`` tag (as in NVIDIA-Merlin/Transformers4Rec's examples/getting-started-session-based/
schema.pb); it becomes our list<int64> column with ``multi_hot`` = the stated max (or the longest
bag when the schema states none); a longer bag, a null bag or id, or a column the schema declares
a list but the parquet stores one id per row (or the reverse) stops the conversion.

Values are copied as they are: dense features are **not** transformed again (meta.json's
``dense_transform`` says so), ids keep their values and ``table_sizes`` come from the schema.
Nothing is published unless every file checks out: a missing column, a column the schema does
not declare, a null, a label other than 0/1, a non-finite dense value, an id outside the
schema's domain or split schemas that disagree stop the conversion with one line naming the
file (and the row). No pickle: parquet and text only.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep.dataset_format import LABEL, SPLITS, PreparedMeta, parquet_schema, write_meta
from data_prep.convert.common import MAX_TABLE_ROWS, regular_file
from data_prep.spec import PrepConfig, PrepResult
from data_prep.staging import check_output, publish, staging_dir
from data_prep.writers import SplitWriter, written_splits

PathLike = Union[str, Path]
DATASET = "nvtabular"
SCHEMA_FILE = "schema.pbtxt"
BATCH_ROWS = 1 << 17
SPLIT_DIRS = {"train": ("train",), "val": ("validation", "valid", "val"), "test": ("test",)}
_DENSE = re.compile(r"int_(\d+)$")
_SPARSE = re.compile(r"cat_(\d+)$")


# -- schema.pbtxt ------------------------------------------------------------------------------

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}:])|([^\s{}:"#]+))')
MAX_DEPTH = 32  # TF-metadata schemas nest 3-4 deep; deeper text is refused, not recursed into


def parse_pbtxt(text: str, where: str) -> Dict[str, List[Any]]:
    """Protobuf text format -> {field: [values]} (messages nested as dicts), enough for a
    TensorFlow-metadata schema; no protobuf dependency. A syntax error names the file."""
    tokens: List[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"{where}: cannot parse near {text[pos : pos + 40]!r}")
            break
        pos = m.end()
        if m.group(1) is None and m.lastindex:
            tokens.append(m.group(m.lastindex))

    def message(i: int, closing: bool, depth: int = 0) -> Tuple[Dict[str, List[Any]], int]:
        if depth > MAX_DEPTH:
            raise ValueError(f"{where}: messages nested more than {MAX_DEPTH} deep")
        out: Dict[str, List[Any]] = {}
        value: Union[Dict[str, List[Any]], str]  # a nested message or a scalar's text
        while i < len(tokens):
            tok = tokens[i]
            if tok == "}":
                if not closing:
                    raise ValueError(f"{where}: unbalanced '}}'")
                return out, i + 1
            if i + 1 >= len(tokens):
                break
            i += 1
            if tokens[i] == ":":
                i += 1
            if i < len(tokens) and tokens[i] == "{":
                value, i = message(i + 1, True, depth + 1)
            elif i < len(tokens):
                value = _scalar(tokens[i], where)
                i += 1
            else:
                break
            out.setdefault(tok, []).append(value)
        if closing:
            raise ValueError(f"{where}: a '{{' is never closed")
        return out, i

    return message(0, False)[0]


def _scalar(raw: str, where: str) -> str:
    """A token's value: a quoted string unescaped (a bad escape names the file), else as written."""
    if not raw.startswith('"'):
        return raw
    try:
        return raw[1:-1].encode().decode("unicode_escape")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: bad escape in {raw[:40]!r} ({err.reason})") from None


def _number(message: Any, key: str, where: Path, what: str) -> Optional[int]:
    """``message[key]`` as an integer in [0, MAX_TABLE_ROWS] (None if absent); a message, text or out-of-range
    value where a number belongs is one error naming the field."""
    values = message.get(key) if isinstance(message, dict) else None
    if not values:
        return None
    try:
        value = int(values[0])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} {key} is {values[0]!r}, expected an integer") from None
    if not 0 <= value <= MAX_TABLE_ROWS:
        raise ValueError(f"{where}: {what} {key} is {value}, expected 0..{MAX_TABLE_ROWS:,}")
    return value


@dataclasses.dataclass(frozen=True)
class Schema:
    """What the conversion needs from schema.pbtxt: column names and each categorical's domain."""

    path: Path
    columns: Tuple[str, ...]
    domains: Dict[str, Tuple[int, int]]  # cat_* -> (min, max) of int_domain: cardinality max + 1
    lists: Dict[str, Optional[int]] = dataclasses.field(default_factory=dict)  # declared list cat_* -> value_count max


def read_schema(path: Path) -> Schema:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing (NVTabular writes it next to the parquet files; it holds "
            "the cardinality of every cat_* column)"
        )
    parsed = parse_pbtxt(path.read_text(), str(path))
    columns: List[str] = []
    domains: Dict[str, Tuple[int, int]] = {}
    lists: Dict[str, Optional[int]] = {}
    for feature in parsed.get("feature", []):
        if not isinstance(feature, dict):
            raise ValueError(f"{path}: feature is {feature!r}, expected a message {{ name: ... }}")
        name = (feature.get("name") or [None])[0]
        if not isinstance(name, str):
            raise ValueError(f"{path}: a feature without a name")
        columns.append(name)
        if _SPARSE.match(name):
            domain = (feature.get("int_domain") or [None])[0]
            hi = _number(domain, "max", path, f"{name!r} int_domain")
            if hi is None:
                raise ValueError(f"{path}: categorical {name!r} has no int_domain {{ min max }} (its cardinality)")
            lo = _number(domain, "min", path, f"{name!r} int_domain") or 0  # min left out: 0
            if hi < lo or hi >= MAX_TABLE_ROWS:
                raise ValueError(
                    f"{path}: categorical {name!r} has int_domain min {lo} max {hi} (cardinality "
                    f"max + 1 must be 1..{MAX_TABLE_ROWS:,})"
                )
            domains[name] = (lo, hi)
            declared = _declared_list(feature, path, name)
            if declared is not False:
                lists[name] = declared
    return Schema(path, tuple(columns), domains, lists)


def _declared_list(feature: Dict[str, List[Any]], path: Path, name: str) -> Union[bool, Optional[int]]:
    """False for one id per row, else the stated max bag size (None: ragged, not stated). A
    ``value_count { max: 1 }`` without the ``list`` tag is TF metadata's way to say 'one value'."""
    tags = [t for a in feature.get("annotation", []) if isinstance(a, dict) for t in a.get("tag", [])]
    count = (feature.get("value_count") or [None])[0]
    top = _number(count, "max", path, f"{name!r} value_count")
    if "list" not in tags and (top is None or top <= 1):
        return False
    return top if top is not None and top > 0 else None


# -- input layout ------------------------------------------------------------------------------


def _natural(path: Path) -> List[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def find_splits(src: Path) -> Dict[str, Optional[Path]]:
    """Our split -> the NVTabular directory holding it (test may be absent: an empty split)."""
    if not src.is_dir():
        raise FileNotFoundError(f"not a directory of NVTabular output: {src}")
    found: Dict[str, Optional[Path]] = {}
    for split, names in SPLIT_DIRS.items():
        dirs = [src / n for n in names if (src / n).is_dir()]
        if len(dirs) > 1:
            raise ValueError(f"{src}: {' and '.join(d.name for d in dirs)} both exist; keep one {split} directory")
        found[split] = dirs[0] if dirs else None
    for split in ("train", "val"):
        if found[split] is None:
            raise ValueError(f"{src}: no {'/'.join(SPLIT_DIRS[split])} directory (NVTabular writes one per split)")
    return found


def _parquet_files(d: Path) -> List[Path]:
    """Every ``*.parquet`` entry of a split directory; one that is not a regular file (a dangling
    symlink, a symlink loop, a directory) is an error, not a part silently left out."""
    files = sorted((regular_file(p) for p in d.iterdir() if p.suffix == ".parquet"), key=_natural)
    if not files:
        raise ValueError(f"{d}: no .parquet files")
    return files


def _schema_for(split_dir: Path, src: Path) -> Schema:
    path = split_dir / SCHEMA_FILE if (split_dir / SCHEMA_FILE).is_file() else src / SCHEMA_FILE
    return read_schema(path)


def _features(schema: Schema) -> Tuple[List[str], List[str]]:
    dense = sorted((c for c in schema.columns if _DENSE.match(c)), key=lambda c: int(c.split("_")[1]))
    sparse = sorted((c for c in schema.columns if _SPARSE.match(c)), key=lambda c: int(c.split("_")[1]))
    if LABEL not in schema.columns or not sparse:
        raise ValueError(f"{schema.path}: expected a {LABEL!r} feature and cat_* features, got {list(schema.columns)}")
    return dense, sparse


# -- checking and converting -------------------------------------------------------------------


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _check_columns(
    path: Path, names: List[str], types: pa.Schema, dense: List[str], sparse: List[str], lists: Dict[str, Optional[int]]
) -> None:
    missing = [c for c in [LABEL, *dense, *sparse] if c not in names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (declared in {SCHEMA_FILE})")
    extra = [c for c in names if (_DENSE.match(c) or _SPARSE.match(c)) and c not in dense and c not in sparse]
    if extra:
        raise ValueError(f"{path}: columns {extra} are not in {SCHEMA_FILE}: the schema disagrees with the parquet")
    for c in sparse:
        t = types.field(c).type
        if _is_list(t) != (c in lists):
            declared = "a list (value_count / tag list)" if c in lists else "one id per row"
            raise ValueError(
                f"{path}: {c} is {t} but {SCHEMA_FILE} declares {declared}: the schema disagrees with the parquet"
            )
        if not pa.types.is_integer(t.value_type if _is_list(t) else t):
            raise ValueError(f"{path}: {c} is {t}, expected integer ids (NVTabular Categorify)")
    for c in [LABEL, *dense]:
        t = types.field(c).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise ValueError(f"{path}: {c} is {t}, expected a number")


def _check_bags(
    path: Path, start: int, c: str, col: pa.Array, stated: Optional[int]
) -> Tuple[pa.Array, np.ndarray, int]:
    """A list column's ids (flattened), the row of each id, and its longest bag; no null id, no
    bag longer than the schema's value_count max."""
    ids, rows = col.flatten(), pc.list_parent_indices(col).to_numpy()
    if ids.null_count:
        row = int(rows[np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0]])
        raise ValueError(f"{path}: row {start + row}: {c} has a null id in its bag")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    longest = int(lengths.max()) if len(lengths) else 0
    if stated is not None and longest > stated:
        row = int(np.flatnonzero(lengths > stated)[0])
        raise ValueError(
            f"{path}: row {start + row}: {c} bag of {lengths[row]} ids is longer than its {SCHEMA_FILE} "
            f"value_count max {stated}"
        )
    return ids, rows, longest


def _check_batch(
    path: Path, start: int, batch: pa.RecordBatch, dense: List[str], sparse: List[str], schema: Schema
) -> Dict[str, int]:
    """One batch of rows from ``start`` (0-based row of the file): one line at the first bad value.
    Returns the longest bag of each list column."""
    domains, longest = schema.domains, {}
    for c in batch.schema.names:
        col = batch.column(c)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{path}: row {start + row}: {c} is {'a null bag' if _is_list(col.type) else 'null'}")
    label = batch.column(LABEL).to_numpy(zero_copy_only=False).astype(np.float64)
    bad = (label != 0) & (label != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: row {start + row}: label {label[row]:g} is not 0 or 1")
    for c in dense:
        values = batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(values.astype(np.float32))  # as stored: 1e300 would become inf
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            why = "not finite" if not np.isfinite(values[row]) else "does not fit float32"
            raise ValueError(f"{path}: row {start + row}: {c} is {values[row]} ({why})")
    for c in sparse:
        lo, hi = domains[c]
        ids, rows = batch.column(c), None
        if c in schema.lists:
            ids, rows, longest[c] = _check_bags(path, start, c, ids, schema.lists[c])
        mm = pc.min_max(ids)
        if len(ids) and (mm["min"].as_py() < lo or mm["max"].as_py() > hi):
            values = ids.to_numpy().astype(np.int64)
            i = int(np.flatnonzero((values < lo) | (values > hi))[0])
            row = i if rows is None else int(rows[i])
            raise ValueError(
                f"{path}: row {start + row}: {c} id {values[i]} is outside its {SCHEMA_FILE} "
                f"domain [{lo}, {hi}] (cardinality {hi + 1})"
            )
    return longest


def _convert(batch: pa.RecordBatch, schema: pa.Schema, dense: List[str], sparse: List[str]) -> pa.Table:
    cols = [pa.array(batch.column(LABEL).to_numpy(zero_copy_only=False).astype(np.int8))]
    cols += [pa.array(batch.column(c).to_numpy(zero_copy_only=False).astype(np.float32)) for c in dense]
    cols += [
        batch.column(c).cast(schema.field(c).type)
        if _is_list(batch.column(c).type)
        else pa.array(batch.column(c).to_numpy().astype(np.int64))
        for c in sparse
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def prepare_nvtabular(
    src: PathLike, out: PathLike, config: Optional[PrepConfig] = None, **overrides: Any
) -> PrepResult:
    """Convert an NVTabular output directory (split dirs + schema.pbtxt) into a prepared dataset."""
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    root, out_path = Path(src), Path(out)
    dirs = find_splits(root)
    check_output(out_path, cfg.overwrite)
    schemas = {s: _schema_for(d, root) for s, d in dirs.items() if d is not None}
    train_schema = schemas["train"]
    dense, sparse = _features(train_schema)
    for split, other in schemas.items():
        if other.path != train_schema.path and (
            _features(other) != (dense, sparse)
            or other.domains != train_schema.domains
            or other.lists != train_schema.lists
        ):
            raise ValueError(
                f"{other.path} disagrees with {train_schema.path} (columns or cardinalities): "
                "the splits must come from one NVTabular workflow"
            )
    files = {s: (_parquet_files(d) if d is not None else []) for s, d in dirs.items()}
    rows: Dict[str, int] = {}
    longest = {c: 0 for c in train_schema.lists}
    for split, paths in files.items():  # check everything before writing anything
        for path in paths:
            try:
                pf = pq.ParquetFile(path)
                _check_columns(path, pf.schema_arrow.names, pf.schema_arrow, dense, sparse, train_schema.lists)
                start = 0
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[LABEL, *dense, *sparse]):
                    for c, n in _check_batch(path, start, batch, dense, sparse, train_schema).items():
                        longest[c] = max(longest[c], n)
                    start += batch.num_rows
            except pa.ArrowException as err:  # damaged file: pyarrow's message does not name it
                raise ValueError(f"{path}: unreadable parquet ({str(err).splitlines()[0]})") from None
            rows[str(path)] = start
    multi_hot = {c: stated or max(longest[c], 1) for c, stated in train_schema.lists.items()}
    schema = parquet_schema(dense, sparse, multi_hot=tuple(multi_hot))
    with staging_dir(out_path) as tmp:
        writers = {s: SplitWriter(tmp, s, schema, cfg) for s in SPLITS}
        for split, paths in files.items():
            for path in paths:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=[LABEL, *dense, *sparse]):
                    writers[split].write(_convert(batch, schema, dense, sparse))
        for w in writers.values():
            w.close()
        sources = [str(p.relative_to(root)) for s in SPLITS for p in files[s]]
        meta = PreparedMeta(
            dataset=DATASET,
            source=str(root.name),
            sources=sources,
            dense_features=dense,
            sparse_features=sparse,
            table_sizes={c: train_schema.domains[c][1] + 1 for c in sparse},
            splits=written_splits(writers),
            split={
                "method": "nvtabular split directories",
                "dirs": {s: (d.name if d is not None else None) for s, d in dirs.items()},
            },
            rows_read=sum(rows.values()),
            rows_per_source={str(Path(p).relative_to(root)): n for p, n in rows.items()},
            dense_transform="NVTabular workflow's, as in the parquet files (torchrec's: log(x + 3), missing -> 0); "
            "not transformed again",
            sparse_transform=f"ids as in the parquet files (Categorify); table_sizes = int_domain max + 1 "
            f"from {SCHEMA_FILE}",
            multi_hot=multi_hot,
        ).to_dict()
        write_meta(tmp, meta)
        publish(tmp, out_path, cfg.overwrite)
    return PrepResult(out_dir=out_path, meta=meta)
