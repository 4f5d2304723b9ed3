"""Synthetic data at cluster scale, without the real data.

Two outputs:

* a prepared dataset (parquet + meta.json, FORMAT.md) with the Criteo schema
  (label, I1..I13, C1..C26) and power-law (Zipf-like) id frequencies over tables
  of any size: ids are drawn by inverse CDF, so the cost is O(rows), independent
  of table sizes (`--rows 100000 --table-sizes criteo-terabyte` describes tables
  of hundreds of millions of rows but generates only 100k rows);
* raw Criteo-like TSV text (`--format criteo-tsv`), e.g. as benchmark input for
  the real preparation path.

Deterministic for a given seed and arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep import textio
from data_prep.dataset_format import (
    CRITEO_DENSE_FEATURES,
    CRITEO_SPARSE_FEATURES,
    DATASET_SYNTHETIC,
    SPLITS,
    PreparedMeta,
    bag_meta,
    parquet_schema,
    write_meta,
)
from data_prep.multi_hot import draw_bags
from data_prep.progress import Progress
from data_prep.spec import PrepConfig, PrepResult
from data_prep.splits import chunk_split_bounds
from data_prep.staging import check_output, publish, staging_dir
from data_prep.vocab_build import KeyCounter, count_histogram, enforce_cap
from data_prep.writers import SplitWriter, written_splits

PathLike = Union[str, Path]

# Per-feature cardinalities (C1..C26) as commonly published for the reference
# DLRM preprocessing: Kaggle (all train values) and Terabyte (all 24 days, raw).
TABLE_SIZE_PRESETS: Dict[str, List[int]] = {
    "criteo-kaggle": [
        1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
        27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
    ],
    "criteo-terabyte": [
        227605432, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 130229467, 3067956, 405282, 10,
        2209, 11938, 155, 4, 976, 14, 292775614, 40790948, 187188510, 590152, 12973, 108, 36,
    ],
}  # fmt: skip
BLOCK_ROWS = 1 << 17
POSITIVE_RATE = 0.25  # about Criteo's click rate
# Fraction of empty raw values per C feature in criteo-tsv output (Criteo-like: late features often empty).
_EMPTY_RATE = [0.0] * 19 + [0.4] * 7


def parse_table_sizes(spec: str, num_tables: int = len(CRITEO_SPARSE_FEATURES)) -> List[int]:
    """A preset name, one integer for all tables, or a comma list of num_tables integers."""
    if spec in TABLE_SIZE_PRESETS:
        return list(TABLE_SIZE_PRESETS[spec])
    try:
        sizes = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"table sizes must be one of {sorted(TABLE_SIZE_PRESETS)}, an integer or {num_tables} comma-separated "
            f"integers, got {spec!r}"
        ) from None
    if len(sizes) == 1:
        sizes = sizes * num_tables
    if len(sizes) != num_tables or min(sizes) < 1:
        raise ValueError(f"need {num_tables} table sizes >= 1, got {len(sizes)}: {spec!r}")
    return sizes


def zipf_ids(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """n ids in [0, size): id k-1 has probability ~ k**-exponent (continuous power
    law, inverse CDF; O(n) for any table size). Id 0 is the most frequent."""
    u = rng.random(n)
    if size == 1:
        return np.zeros(n, np.int64)
    if abs(exponent - 1.0) < 1e-9:
        x = np.power(float(size), u)
    else:
        a = 1.0 - exponent
        x = np.power(1.0 + u * (np.power(float(size), a) - 1.0), 1.0 / a)
    return np.minimum(np.floor(x).astype(np.int64), size) - 1


def _dense_ints(rng: np.random.Generator, n: int) -> np.ndarray:
    """Criteo-like counts: mostly small, heavy tail, a few -1."""
    x = np.minimum(np.floor(np.exp(rng.exponential(0.7, n))), 2**31 - 1).astype(np.int64) - 1
    x[rng.random(n) < 0.02] = -1
    return x


def _blocks(rows: int) -> Iterator[int]:
    done = 0
    while done < rows:
        n = min(BLOCK_ROWS, rows - done)
        yield n
        done += n


def generate_dataset(
    out: PathLike,
    rows: int,
    table_sizes: Sequence[int],
    exponent: float = 1.05,
    seed: int = 0,
    config: Optional[PrepConfig] = None,
    multi_hot: int = 0,
    pooling: Optional[Dict[str, str]] = None,
    **overrides: Any,
) -> PrepResult:
    """Write a prepared dataset (FORMAT.md) of `rows` synthetic Criteo-schema rows,
    split like Criteo Kaggle (7 chunks). meta.json's id_histograms are exact
    counts of the generated train ids (subject to count_memory_mb). ``multi_hot=N``
    makes every C feature a bag of 0..N ids per row (uniform sizes, empty bags included);
    ``pooling`` is recorded per feature (default sum)."""
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if not isinstance(multi_hot, int) or multi_hot < 0:
        raise ValueError(f"multi_hot (max bag size) must be an integer >= 0, got {multi_hot!r}")
    bags = {f: multi_hot for f in CRITEO_SPARSE_FEATURES} if multi_hot else {}
    bag_meta(CRITEO_SPARSE_FEATURES, pooling, bags)  # refuses a bad pooling before any work
    sizes = [int(s) for s in table_sizes]
    if len(sizes) != len(CRITEO_SPARSE_FEATURES) or min(sizes) < 1:
        raise ValueError(f"need {len(CRITEO_SPARSE_FEATURES)} table sizes >= 1")
    out_path = Path(out)
    check_output(out_path, cfg.overwrite)
    rng = np.random.default_rng(seed)
    bounds = chunk_split_bounds(rows)
    schema = parquet_schema(multi_hot=tuple(bags))
    counters: Dict[str, Optional[KeyCounter]] = {f: KeyCounter() for f in CRITEO_SPARSE_FEATURES}
    over_cap: Dict[str, str] = {}
    with staging_dir(out_path) as tmp:
        writers = {s: SplitWriter(tmp, s, schema, cfg) for s in SPLITS}
        progress = Progress(cfg.progress, rows, "synthetic", unit="rows")
        pos = 0
        for n in _blocks(rows):
            label = (rng.random(n) < POSITIVE_RATE).astype(np.int8)
            cols = [pa.array(label, pa.int8())]
            for _ in CRITEO_DENSE_FEATURES:
                cols.append(pa.array(np.log1p(np.maximum(_dense_ints(rng, n), 0)).astype(np.float32)))
            train_rows = max(0, min(n, bounds["train"][1] - pos))
            if multi_hot:
                drawn = [
                    draw_bags(rng, n, multi_hot, functools.partial(zipf_ids, rng, size=size, exponent=exponent))
                    for size in sizes
                ]
                cols += [column for column, _, _ in drawn]
                train_ids = [ids[: offsets[train_rows]] for _, ids, offsets in drawn]
            else:
                ids = [zipf_ids(rng, n, size, exponent) for size in sizes]
                cols += [pa.array(i, pa.int64()) for i in ids]
                train_ids = [i[:train_rows] for i in ids]
            table = pa.Table.from_arrays(cols, schema=schema)
            for name, col in zip(CRITEO_SPARSE_FEATURES, train_ids):
                counter = counters[name]
                if counter is not None:
                    counter.add(col)
            enforce_cap(counters, over_cap, int(cfg.count_memory_mb * (1 << 20)))
            for split in SPLITS:
                lo, hi = (max(b - pos, 0) for b in bounds[split])
                if min(hi, n) > lo:
                    writers[split].write(table.slice(lo, min(hi, n) - lo))
            pos += n
            progress.update(n, n)
        progress.close()
        for w in writers.values():
            w.close()
        histograms: Dict[str, Any] = {}
        for name in CRITEO_SPARSE_FEATURES:
            c = counters[name]
            if c is None:
                histograms[name] = {"distinct_train_values": None, "hashed": False}
                continue
            c.consolidate()
            histograms[name] = {**count_histogram(c.counts), "distinct_train_values": int(len(c.keys)), "hashed": False}
        meta = PreparedMeta(
            dataset=DATASET_SYNTHETIC,
            source="synthetic",
            sources=[],
            dense_features=CRITEO_DENSE_FEATURES,
            sparse_features=CRITEO_SPARSE_FEATURES,
            table_sizes=dict(zip(CRITEO_SPARSE_FEATURES, sizes)),
            splits=written_splits(writers),
            split={"method": "dlrm-7-chunks", "chunks": 7},
            rows_read=rows,
            id_histograms=histograms,
            pooling=pooling,
            multi_hot=bags,
            extra={
                "histograms_skipped": dict(sorted(over_cap.items())),
                "synthetic": {
                    "rows": rows,
                    "zipf_exponent": exponent,
                    "seed": seed,
                    "positive_rate": POSITIVE_RATE,
                    "multi_hot": multi_hot,
                },
            },
        ).to_dict()
        write_meta(tmp, meta)
        publish(tmp, out_path, cfg.overwrite)
    return PrepResult(out_dir=out_path, meta=meta)


_HEXCHARS = np.frombuffer(b"0123456789abcdef", np.uint8)


def _hex_column(values: np.ndarray) -> pa.Array:
    """uint32 values -> 8-char lowercase hex strings (vectorised, zero Python per row)."""
    n = len(values)
    shifts = (4 * (7 - np.arange(8))).astype(np.uint64)
    nib = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(15)
    data = _HEXCHARS[nib.astype(np.int64)].reshape(-1)
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


def _blank(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(mask), pa.scalar("", pa.string()), arr)


def criteo_tsv_blocks(
    rows: Optional[int], size_bytes: Optional[int], table_sizes: Sequence[int], exponent: float = 1.05, seed: int = 0
) -> Iterator[bytes]:
    """Raw Criteo Kaggle-format TSV text, block by block, until `rows` rows or `size_bytes` bytes."""
    rng = np.random.default_rng(seed)
    done_rows = done_bytes = 0
    salts = [np.uint64(0x51ED27 * (j + 1)) for j in range(len(table_sizes))]
    while (rows is None or done_rows < rows) and (size_bytes is None or done_bytes < size_bytes):
        n = BLOCK_ROWS if rows is None else min(BLOCK_ROWS, rows - done_rows)
        cols = [pc.cast(pa.array((rng.random(n) < POSITIVE_RATE).astype(np.int64)), pa.string())]
        for _ in CRITEO_DENSE_FEATURES:
            ints = pc.cast(pa.array(_dense_ints(rng, n)), pa.string())
            cols.append(_blank(ints, rng.random(n) < 0.15))
        for j, size in enumerate(table_sizes):
            ids = zipf_ids(rng, n, size, exponent)
            raw = textio.splitmix64(ids.astype(np.uint64) ^ salts[j]) & np.uint64(0xFFFFFFFF)
            cols.append(_blank(_hex_column(raw), rng.random(n) < _EMPTY_RATE[j % len(_EMPTY_RATE)]))
        cols[-1] = pc.binary_join_element_wise(cols[-1], pa.scalar("", pa.string()), "\n")  # "...C26\n"
        lines = pc.binary_join_element_wise(*cols, "\t")
        offsets = np.frombuffer(lines.buffers()[1], np.int32, count=n + 1, offset=4 * lines.offset)
        data = lines.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]
        if size_bytes is not None and done_bytes + len(data) > size_bytes:
            keep = int(np.searchsorted(offsets - offsets[0], size_bytes - done_bytes, side="right")) - 1
            if keep > 0:
                yield data[: offsets[keep] - offsets[0]]
            return
        done_rows += n
        done_bytes += len(data)
        yield data


def write_criteo_tsv(
    path: PathLike,
    rows: Optional[int] = None,
    size_mb: Optional[float] = None,
    table_sizes: Sequence[int] = (100_000,) * 26,
    exponent: float = 1.05,
    seed: int = 0,
) -> Dict[str, int]:
    """Write raw Criteo-like TSV (plain, or gzip if path ends with .gz)."""
    if rows is None and size_mb is None:
        raise ValueError("give rows or size_mb")
    size_bytes = None if size_mb is None else int(size_mb * 1_000_000)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    written = lines = 0
    f: io.BufferedIOBase
    if p.suffix == ".gz":
        import gzip

        f = gzip.open(tmp, "wb", compresslevel=1)
    else:
        f = open(tmp, "wb")
    with f:
        for data in criteo_tsv_blocks(rows, size_bytes, table_sizes, exponent, seed):
            f.write(data)
            written += len(data)
            lines += data.count(b"\n")
    tmp.rename(p)
    return {"rows": lines, "bytes": written}
