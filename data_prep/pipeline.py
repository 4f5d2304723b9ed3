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
order of the raw values (see textio.parse_hex8 / parse_token7), so counting is numpy
sorts and lookup a whole-array hash table (vocab_build.KeyTable), never per-row Python.

Memory: one block (default 8 MB of text and a few times that in arrays) plus the
per-feature counts (16 bytes per distinct train value); in pass 2 the vocabularies (16 bytes
per kept value) and their lookup tables (32-64 bytes per value, for vocabularies of up to 2M
values). When the counts exceed
`count_memory_mb`, the feature with the most distinct values is switched to
hashing (id = splitmix64(value) % hash_size), its counts are dropped, and this is
repeated until under the cap; meta.json records which features were hashed and
why. Features that were not hashed are exact.

With --vocab-from DIR (vocab_from.py) nothing is counted and there is no tail pass:
pass 1 only validates and counts rows, pass 2 encodes with DIR's saved vocabulary.

This module is the single-process run; its pieces live beside it: spec.py (config,
columns, parse_block), splits.py, scan.py (threaded block reading), vocab_build.py
(counts, cap, vocabularies), writers.py (part files, rejects), staging.py (OUT's
checks and atomic publish), raw_meta.py (meta.json). parallel.py runs the same
passes on worker processes. The old names stay importable from here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_prep.dataset_format import REJECTS_FILE, SPLITS, write_meta
from data_prep.parallel import run_prep_parallel
from data_prep.raw_meta import build_meta
from data_prep.scan import Checkpoint, Progress, approx_offset, scan
from data_prep.spec import (  # noqa: F401  (re-exported: the names other modules import from here)
    DEFAULT_COUNT_MEMORY_MB, HOUR_OUTPUTS, DatasetSpec, Parsed, PathLike, PrepConfig, PrepResult, RawColumn, Reject,
    parse_block,
)
from data_prep.splits import SPLIT_CODES, ChunkSplit, DaySplit, RandomSplit, SplitPolicy, chunk_split_bounds  # noqa: F401
from data_prep.staging import (  # noqa: F401
    check_input, check_output, checked_paths, publish, remove_stale_staging, staging_dir,
)
from data_prep.vocab_build import (  # noqa: F401
    DEFAULT_FALLBACK_HASH_SIZE, FeatureVocab, KeyCounter, build_vocab, count_histogram, enforce_cap, finish_vocabs,
    save_vocabularies, unique_counts,
)
from data_prep.vocab_from import load_saved_vocab, staged_vocabularies
from data_prep.writers import (  # noqa: F401
    MAX_REJECT_RAW_BYTES, RejectSink, SplitWriter, clip_raw, encoded_rows, format_reject, reject_kind,
)

# Old private names, kept for importers (synthetic.py).
_enforce_cap = enforce_cap
_save_vocabularies = save_vocabularies


@dataclass
class _Counted:
    """What pass 1 (and the tail pass) leave for the vocabularies and pass 2."""

    counters: Dict[str, Optional[KeyCounter]]
    hashed: Dict[str, str] = field(default_factory=dict)  # feature -> why it is hashed
    checkpoints: List[Checkpoint] = field(default_factory=list)  # one per block, for the tail pass
    rows_per_file: List[int] = field(default_factory=list)
    acc: int = 0  # accepted rows


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
        return run_prep_parallel(spec, sources, out, cfg, policy, extra_meta)
    paths, out_path = checked_paths(sources, out, cfg.overwrite)
    saved = load_saved_vocab(cfg.vocab_from, spec) if cfg.vocab_from is not None else None
    total_bytes = sum(p.stat().st_size for p in paths)
    passes = 3 if policy.needs_tail_pass and saved is None else 2
    with staging_dir(out_path) as tmp:
        sink = RejectSink(tmp / REJECTS_FILE, cfg.strict, {p.name: p for p in paths})
        try:
            progress = Progress(cfg.progress, total_bytes, f"1/{passes} count")
            counted = _count_pass(spec, paths, cfg, policy, sink, progress, count_values=saved is None)
            policy.finish_pass1(counted.rows_per_file)
            if saved is None and isinstance(policy, ChunkSplit) and counted.acc > policy.train_end:
                _tail_pass(spec, paths, cfg, policy, counted, total_bytes, passes)
            vocabs, histograms, vocab_entries = staged_vocabularies(
                spec, cfg, counted.counters, counted.hashed, tmp, saved)
            progress = Progress(cfg.progress, total_bytes, f"{passes}/{passes} write")
            splits_meta, zero_rows = _write_pass(spec, paths, cfg, policy, vocabs, tmp, counted.acc, progress)
        finally:
            sink.close()
        meta = build_meta(spec, [p.name for p in paths], cfg, policy, vocabs, histograms, counted.hashed, zero_rows,
                          splits_meta, counted.acc, sink, counted.rows_per_file, vocab_entries, extra_meta)
        if saved is not None:
            saved.annotate(meta)
        write_meta(tmp, meta)
        publish(tmp, out_path, cfg.overwrite)
    return PrepResult(out_dir=out_path, meta=meta)


def _count_uniques(
    policy: SplitPolicy, counters: Dict[str, Optional[KeyCounter]], fi: int, parsed: Parsed
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Per-block work of pass 1 (on the scan threads): distinct train values and their counts of
    the features still counted."""
    mask = policy.count_mask(fi, parsed.lines)
    return {
        name: unique_counts(parsed.keys[name] if mask is None else parsed.keys[name][mask])
        for name, counter in list(counters.items())
        if counter is not None
    }


def _count_pass(
    spec: DatasetSpec, paths: Sequence[Path], cfg: PrepConfig, policy: SplitPolicy, sink: RejectSink,
    progress: Progress, count_values: bool = True,
) -> _Counted:
    """Pass 1: validate every line (rejects to `sink`), count accepted rows per file and (unless
    encoding with a saved vocabulary) the train values of every feature, hashing the largest ones
    while the counts exceed count_memory_mb."""
    counted = _Counted({f: KeyCounter() for f in spec.sparse_features} if count_values else {})
    cap = int(cfg.count_memory_mb * (1 << 20))
    for fi, path in enumerate(paths):
        acc_file = 0
        work = functools.partial(_count_uniques, policy, counted.counters, fi)
        for block, parsed, extra, uniq in scan(spec, path, cfg, progress, work=work):
            sink.add(parsed.rejects)
            n = len(parsed.lines)
            counted.checkpoints.append(Checkpoint(fi, block.offset, block.first_line, counted.acc, acc_file))
            for name, counter in counted.counters.items():
                if counter is not None and name in uniq:
                    counter.add_unique(*uniq[name])
            counted.acc += n
            acc_file += n
            enforce_cap(counted.counters, counted.hashed, cap)
            sink.add(extra)
        counted.rows_per_file.append(acc_file)
    progress.close()
    return counted


def _tail_pass(
    spec: DatasetSpec, paths: Sequence[Path], cfg: PrepConfig, policy: ChunkSplit, counted: _Counted,
    total_bytes: int, passes: int,
) -> None:
    """Kaggle: re-read from the last block that starts in train and subtract the counts of the rows
    past the train chunk (its end is only known once every row is counted)."""
    cps = counted.checkpoints
    cp = cps[max(c for c in range(len(cps)) if cps[c].acc <= policy.train_end)]
    progress = Progress(cfg.progress, total_bytes - approx_offset(paths[cp.fi], cp.offset), f"2/{passes} tail")
    pos = cp.acc
    for _block, parsed, _extra, _ in scan(spec, paths[cp.fi], cfg, progress, start=cp):
        n = len(parsed.lines)
        lo = max(policy.train_end - pos, 0)
        for name, counter in counted.counters.items():
            if counter is not None and lo < n:
                counter.add(parsed.keys[name][lo:], sign=-1)
        pos += n
    progress.close()


def _encode_ids(vocabs: Dict[str, FeatureVocab], parsed: Parsed) -> Dict[str, np.ndarray]:
    """Per-block work of pass 2 (on the scan threads): every feature's ids."""
    return {name: vocab.encode(parsed.keys[name]) for name, vocab in vocabs.items()}


def _write_pass(
    spec: DatasetSpec, paths: Sequence[Path], cfg: PrepConfig, policy: SplitPolicy,
    vocabs: Dict[str, FeatureVocab], tmp: Path, accepted: int, progress: Progress,
) -> Tuple[Dict[str, Any], Dict[str, List[int]]]:
    """Pass 2: parse again, encode, append each row to its split's part files. Returns meta.json's
    splits and the id-0 rows per feature and split."""
    schema = spec.schema()
    writers = {s: SplitWriter(tmp, s, schema, cfg) for s in SPLITS}
    zero_rows = {name: [0, 0, 0] for name in spec.sparse_features}
    work = functools.partial(_encode_ids, vocabs)
    acc2 = 0
    for fi, path in enumerate(paths):
        acc_file = 0
        for _block, parsed, _extra, ids in scan(spec, path, cfg, progress, work=work):
            n = len(parsed.lines)
            codes = policy.assign(fi, parsed.lines, acc2, acc_file)
            for code, split in enumerate(SPLITS):
                sel = codes == code
                if sel.any():
                    writers[split].write(encoded_rows(spec, parsed, ids, sel, schema, zero_rows, code))
            acc2 += n
            acc_file += n
    progress.close()
    for w in writers.values():
        w.close()
    if acc2 != accepted:
        raise RuntimeError(f"input changed during preparation: {accepted} rows accepted in pass 1, {acc2} in pass 2")
    return {s: {"rows": writers[s].rows, "files": writers[s].files} for s in SPLITS}, zero_rows
