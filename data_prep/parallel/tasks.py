"""What one worker does with one byte range (driver.py schedules these: threads of the calling
process for one worker, else local processes or dask).

Every task is a top-level function of picklable arguments that reads its input range itself and
writes bulky results to the staging directory (rejects, encoded pieces), returning only small
things and per-block value counts. Workers therefore need the inputs and OUT's parent directory
at the same paths (one machine, or a shared filesystem for a cluster).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from data_prep import textio
from data_prep.dataset_format import SPLITS
from data_prep.spec import DatasetSpec, Parsed, PrepConfig, Reject, parse_block
from data_prep.splits import SplitPolicy
from data_prep.vocab_build import FeatureVocab, KeyTable, unique_counts
from data_prep.writers import SplitWriter, encoded_rows, format_reject
from data_prep.parallel.ranges import ByteRange, iter_range_blocks

Uniques = Dict[str, Tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class TaskContext:
    """What every task needs to know about the run (small; sent with each task)."""

    spec: DatasetSpec
    cfg: PrepConfig
    policy: SplitPolicy
    work_dir: str  # scratch inside the staging directory
    vocab_sizes: Dict[str, Tuple[int, bool]] = field(default_factory=dict)  # feature -> (size, hashed)
    vocab_tables: Dict[str, str] = field(default_factory=dict)  # feature -> its saved KeyTable (.npy)


@dataclass
class CountResult:
    """Pass 1 of one range."""

    lines: int  # physical lines in the range (the header included)
    accepted: int
    block_uniques: List[Uniques]  # train-value counts per block, in order (the cap is checked per block)
    block_accepted: List[int]
    block_offsets: List[int]  # byte offset of each block in its file (where a tail task may start)
    rejects_file: Optional[str]  # records `line \t kind \t reason \t raw`, lines relative to first_line
    rejects: int
    first_reject: Optional[Reject]  # for --strict: the message names the first one
    split_rows: Optional[List[int]] = None  # rows per split (policies that split by line number)


def _blocks(ctx: TaskContext, rng: ByteRange, first_line: int) -> Iterator[Tuple[textio.LineBlock, Parsed]]:
    name = Path(rng.path).name
    for block in iter_range_blocks(rng, ctx.cfg.block_bytes, first_line):
        if ctx.spec.header is not None and rng.start == 0 and block.first_line == first_line and block.num_lines:
            first = block.line(0)
            if first != ctx.spec.header:
                raise ValueError(
                    f"{rng.path}:1: expected the header line {ctx.spec.header.decode()!r}, got {first[:200]!r}"
                )
            block = block.drop_first_line()
        yield block, parse_block(ctx.spec, block, name)


def _truncation(block: textio.LineBlock, name: str) -> List[Reject]:
    if block.truncated is None:
        return []
    reason, tail = block.truncated
    if tail:
        reason += f"; last line incomplete ({len(tail)} bytes)"
    return [Reject(block.first_line + block.num_lines, reason, tail, name)]


def count_range(ctx: TaskContext, rng: ByteRange, first_line: int, live: Sequence[str], tag: str) -> CountResult:
    """Validate a range, count its train values per block, spill its rejects."""
    name = Path(rng.path).name
    out = CountResult(0, 0, [], [], [], None, 0, None)
    splits = np.zeros(len(SPLITS), np.int64) if ctx.policy.uses_line_numbers else None
    f = None
    try:
        for block, parsed in _blocks(ctx, rng, first_line):
            out.lines = block.first_line + block.num_lines - first_line
            mask = ctx.policy.count_mask(rng.fi, parsed.lines)
            out.block_uniques.append(
                {n: unique_counts(parsed.keys[n] if mask is None else parsed.keys[n][mask]) for n in live}
            )
            n = len(parsed.lines)
            out.block_accepted.append(n)
            out.block_offsets.append(block.offset)
            out.accepted += n
            if splits is not None:
                splits += np.bincount(ctx.policy.assign(rng.fi, parsed.lines, 0, 0), minlength=len(SPLITS))
            rejects = parsed.rejects + _truncation(block, name)
            if rejects:
                if out.first_reject is None:
                    out.first_reject = rejects[0]
                if f is None:
                    out.rejects_file = os.path.join(ctx.work_dir, f"rejects-{tag}.bin")
                    f = open(out.rejects_file, "wb")
                for r in rejects:
                    reason, raw, kind = format_reject(r)
                    f.write(f"{r.line - first_line}\t{kind}\t{reason}\t".encode("utf-8") + raw + b"\n")
                out.rejects += len(rejects)
                if block.truncated is not None:
                    out.lines += 1  # the reject names the line after the last complete one
                if ctx.cfg.strict:
                    break  # the run stops at this range's (or an earlier range's) first reject
    finally:
        if f is not None:
            f.close()
    if splits is not None:
        out.split_rows = splits.tolist()
    return out


def read_rejects(path: str) -> Iterator[Tuple[int, str, str, bytes]]:
    """(relative line, kind, reason, raw) records of a count_range rejects file."""
    with open(path, "rb") as f:
        for rec in f:
            line, kind, reason, raw = rec[:-1].split(b"\t", 3)
            yield int(line), kind.decode("utf-8"), reason.decode("utf-8"), raw


def tail_range(ctx: TaskContext, rng: ByteRange, skip: int, live: Sequence[str]) -> Uniques:
    """Kaggle tail pass: value counts of the range's accepted rows from the `skip`-th on."""
    keys: Dict[str, List[np.ndarray]] = {n: [] for n in live}
    seen = 0
    for _block, parsed in _blocks(ctx, rng, 1):
        n = len(parsed.lines)
        lo = max(skip - seen, 0)
        if lo < n:
            for name in live:
                keys[name].append(parsed.keys[name][lo:])
        seen += n
    return {name: unique_counts(np.concatenate(v) if v else np.zeros(0, np.int64)) for name, v in keys.items()}


_VOCAB_CACHE: Dict[Tuple[str, int, int, int], FeatureVocab] = {}


def _file_key(path: Path) -> Tuple[str, int, int, int]:
    """A file's identity for the cache: a later run whose staging directory reuses a path (same
    output, same pid) has new files, so a long-lived (dask) worker does not encode with stale ones."""
    st = path.stat()
    return str(path), st.st_ino, st.st_mtime_ns, st.st_size


def _vocab(ctx: TaskContext, name: str) -> FeatureVocab:
    """A feature's vocabulary, once per worker process: its KeyTable, built once by the parent and
    memory-mapped (shared page cache). An exact vocabulary without one holds no values (every id 0)."""
    size, hashed = ctx.vocab_sizes[name]
    if hashed:
        return FeatureVocab(size=size, hashed=True)
    if name not in ctx.vocab_tables:
        return FeatureVocab(size=size)
    path = Path(ctx.vocab_tables[name])
    key = _file_key(path)
    if key not in _VOCAB_CACHE:
        if len(_VOCAB_CACHE) > 4 * len(ctx.vocab_sizes):
            _VOCAB_CACHE.clear()  # a long-lived (dask) worker that saw earlier runs
        _VOCAB_CACHE[key] = FeatureVocab.from_table(size, KeyTable.load(path))
    return _VOCAB_CACHE[key]


@dataclass
class EncodeResult:
    accepted: int
    rows: List[int]  # per split
    pieces: List[Optional[str]]  # per split: Arrow IPC file of the encoded rows, or None
    zero_rows: Dict[str, List[int]]  # per feature: rows with id 0 per split


def encode_range(ctx: TaskContext, rng: ByteRange, first_line: int, acc: int, acc_file: int, tag: str) -> EncodeResult:
    """Pass 2: encode a range's accepted rows and spill them per split as Arrow IPC pieces."""
    spec, sparse = ctx.spec, ctx.spec.sparse_features
    schema = spec.schema()
    vocabs = {name: _vocab(ctx, name) for name in sparse}
    res = EncodeResult(0, [0] * len(SPLITS), [None] * len(SPLITS), {n: [0] * len(SPLITS) for n in sparse})
    writers: List[Optional[ipc.RecordBatchFileWriter]] = [None] * len(SPLITS)
    options = ipc.IpcWriteOptions(compression=None, use_threads=False)  # read back memory-mapped, zero-copy
    try:
        for _block, parsed in _blocks(ctx, rng, first_line):
            n = len(parsed.lines)
            codes = ctx.policy.assign(rng.fi, parsed.lines, acc + res.accepted, acc_file + res.accepted)
            ids = {name: vocabs[name].encode(parsed.keys[name]) for name in sparse}
            for code in range(len(SPLITS)):
                sel = codes == code
                if not sel.any():
                    continue
                table = encoded_rows(spec, parsed, ids, sel, schema, res.zero_rows, code)
                writer = writers[code]
                if writer is None:
                    piece = os.path.join(ctx.work_dir, f"piece-{tag}-{SPLITS[code]}.arrow")
                    res.pieces[code] = piece
                    writer = writers[code] = ipc.new_file(piece, schema, options=options)
                writer.write_table(table)
                res.rows[code] += int(sel.sum())
            res.accepted += n
    finally:
        for w in writers:
            if w is not None:
                w.close()
    return res


def assemble_part(
    ctx: TaskContext, out_dir: str, split: str, index: int, pieces: Sequence[Tuple[str, int, int]]
) -> Tuple[List[str], int]:
    """Write part file `index` of `split` from rows [lo, hi) of each piece, in order, exactly as
    one SplitWriter over the whole split writes it (row groups cut at the same rows)."""
    writer = SplitWriter(Path(out_dir), split, ctx.spec.schema(), ctx.cfg, first_index=index)
    for path, lo, hi in pieces:
        copy_rows(writer, path, lo, hi)
    writer.close()
    return writer.files, writer.rows


def copy_rows(writer: SplitWriter, piece: str, lo: int, hi: int) -> None:
    """Append rows [lo, hi) of an encode_range piece to a part file's writer."""
    with pa.memory_map(piece) as source:
        reader = ipc.open_file(source)
        seen = 0
        for b in range(reader.num_record_batches):
            batch = reader.get_batch(b)
            a, z = max(lo - seen, 0), min(hi - seen, batch.num_rows)
            if a < z:
                writer.write(pa.Table.from_batches([batch.slice(a, z - a)]))
            seen += batch.num_rows
            if seen >= hi:
                break
