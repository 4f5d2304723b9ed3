"""The preparation driver (every kind of raw input, every worker count): tasks over byte ranges.

A dataset is a `DatasetSpec` (raw columns and their kinds, separator, optional header) plus a
`SplitPolicy` (which accepted row goes to train/val/test). Inputs are cut into byte ranges of whole
blocks (ranges.py; a gzip file is one range). Tasks (tasks.py) run per range, on the engine
cfg asks for (engine.py: with one worker on threads of this process, else worker processes or a
Dask cluster); this process merges their results **in input order**, which is what makes the output
the same bytes whatever the worker count:

* pass 1 validates every line (malformed lines go to rejects.tsv, or raise with --strict), counts
  accepted rows and the train values of every feature (exact, as int64 keys whose order is the byte
  order of the raw values: vocab_build.KeyCounter). Line numbers: a range reports its line count, so
  rejects get absolute lines (Avazu's split depends on line numbers: its lines are counted first,
  one task per range). Value counts: a range returns its per-block counts and they are added block
  by block with the `count_memory_mb` check after each (ranges.py cuts the blocks one reader of the
  whole file would), so the same features are switched to hashing whatever the ranges; the counts
  are otherwise exact in any order;
* the Kaggle tail pass: the 7-chunk train/val boundary is known only once every row is counted, so
  equal tasks from the block that holds it on report the counts of the rows past it, subtracted;
* pass 2: each range encodes its rows with the vocabulary (its lookup tables built once here and
  memory-mapped by every worker) into Arrow pieces per split; each output part file is then
  assembled by a task from the pieces that hold its rows, with SplitWriter's row groups, except the
  last part of each split, which this process writes piece by piece as ranges finish (it could only
  start at the very end). Pieces are deleted once used.

With --vocab-from DIR (vocab_from.py) nothing is counted and there is no tail pass. meta.json:
raw_meta.py.

Memory: a bounded window of tasks in flight (each holds a range: `range_mb`), the counts (capped),
and one part file's row group per assembling worker; in pass 2 the vocabularies (16 bytes per kept
value) and their lookup tables (32-64 bytes per value, memory-mapped from the staging directory).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_prep.parallel import engine as engines
from data_prep.parallel import tasks
from data_prep.dataset_format import REJECTS_FILE, SPLITS, part_file, write_meta
from data_prep.raw_meta import build_meta
from data_prep.progress import Progress, StageLog
from data_prep.spec import DatasetSpec, PathLike, PrepConfig, PrepResult, Reject
from data_prep.splits import ChunkSplit, SplitPolicy
from data_prep.staging import checked_paths, publish, staging_dir
from data_prep.vocab_build import FeatureVocab, KeyCounter, enforce_cap, save_tables, vocab_threads
from data_prep.vocab_from import load_saved_vocab, staged_vocabularies
from data_prep.writers import RejectSink, SplitWriter
from data_prep.parallel.ranges import ByteRange, count_lines, plan_ranges

MAX_RANGE_BYTES = 64 << 20


def _target_bytes(total: int, cfg: PrepConfig, slots: int) -> int:
    """About 4 ranges per task slot, at most 64 MB each (memory per task), at least one block."""
    return int(min(MAX_RANGE_BYTES, max(cfg.block_bytes, total // (4 * slots) + 1)))


def _label(r: ByteRange) -> str:
    return f"{r.path}" + ("" if r.gzip else f" (bytes {r.start}-{r.end})")


@dataclasses.dataclass
class _RangeState:
    first_line: int = 1  # absolute line number of the range's first line
    acc: int = 0  # accepted rows before the range, overall
    acc_file: int = 0  # ... in its file
    accepted: int = 0
    split_rows: Optional[List[int]] = None
    block_offsets: List[int] = dataclasses.field(default_factory=list)  # where each block starts
    block_accepted: List[int] = dataclasses.field(default_factory=list)


def run_prep(
    spec: DatasetSpec,
    sources: Sequence[PathLike],
    out: PathLike,
    cfg: PrepConfig,
    policy: SplitPolicy,
    extra_meta: Optional[Dict[str, Any]] = None,
) -> PrepResult:
    """Prepare `sources` (in order) into a dataset directory at `out` (FORMAT.md); `extra_meta` is
    what the dataset's module adds to meta.json (its transforms)."""
    paths, out_path = checked_paths(sources, out, cfg.overwrite)
    saved = load_saved_vocab(cfg.vocab_from, spec) if cfg.vocab_from is not None else None
    total_bytes = sum(p.stat().st_size for p in paths)
    sparse = spec.sparse_features

    with staging_dir(out_path) as tmp, engines.make_engine(cfg) as engine:
        window = 2 * engine.slots
        work = tmp / "_work"
        work.mkdir()
        for split in SPLITS:  # every split has its directory, even an empty one
            (tmp / split).mkdir()
        ranges = plan_ranges(paths, cfg.block_bytes, _target_bytes(total_bytes, cfg, engine.slots))
        ctx = tasks.TaskContext(spec, cfg, policy, str(work))
        state = [_RangeState() for _ in ranges]
        given_first = [1] * len(ranges)  # the first line a task numbers from
        if policy.uses_line_numbers:  # the split needs absolute line numbers in pass 1
            jobs = [(_label(r), (lambda r=r: (r,))) for r in ranges]
            line_counts = list(engines.ordered(engine, count_lines, jobs, window))
            _first_lines(ranges, line_counts, given_first)

        sink = RejectSink(tmp / REJECTS_FILE, cfg.strict, {p.name: p for p in paths})
        counters: Dict[str, Optional[KeyCounter]] = {f: KeyCounter() for f in sparse} if saved is None else {}
        hashed: Dict[str, str] = {}
        try:
            rows_per_file = _pass1(ctx, engine, ranges, state, given_first, sink, counters, hashed, window, total_bytes)
            policy.finish_pass1(rows_per_file)
            acc = sum(rows_per_file)
            log = StageLog("mlet-prep", enabled=cfg.progress)  # the steps between the bars, silent at Kaggle size
            if saved is None and isinstance(policy, ChunkSplit) and acc > policy.train_end:
                with log.stage("2/3 tail (rows past the train split)"):
                    _tail(ctx, engine, ranges, state, counters, policy.train_end, window)

            with log.stage("vocabularies"):
                vocabs, histograms, vocab_entries = staged_vocabularies(spec, cfg, counters, hashed, tmp, saved)
                ctx = dataclasses.replace(
                    ctx,
                    vocab_sizes={n: (int(v.size), v.hashed) for n, v in vocabs.items()},
                    vocab_tables=save_tables(vocabs, work / "tables", vocab_threads(cfg)),
                )
            vocabs = {n: FeatureVocab(size=v.size, hashed=v.hashed) for n, v in vocabs.items()}  # free the keys
            for i, r in enumerate(ranges):
                if state[i].split_rows is None:
                    codes = policy.assign(r.fi, np.zeros(state[i].accepted, np.int64), state[i].acc, state[i].acc_file)
                    state[i].split_rows = np.bincount(codes, minlength=len(SPLITS)).tolist()
            splits_meta, zero_rows, acc2 = _pass2(ctx, engine, ranges, state, tmp, window, total_bytes)
            if acc2 != acc:
                raise RuntimeError(f"input changed during preparation: {acc} rows accepted in pass 1, {acc2} in pass 2")
        finally:
            sink.close()
        shutil.rmtree(work)
        meta = build_meta(
            spec,
            [p.name for p in paths],
            cfg,
            policy,
            vocabs,
            histograms,
            hashed,
            zero_rows,
            splits_meta,
            acc,
            sink,
            rows_per_file,
            vocab_entries,
            extra_meta,
        )
        if saved is not None:
            saved.annotate(meta)
        write_meta(tmp, meta)
        publish(tmp, out_path, cfg.overwrite)
    return PrepResult(out_dir=out_path, meta=meta)


def _first_lines(ranges: Sequence[ByteRange], line_counts: Sequence[int], out: List[int]) -> None:
    line, fi = 1, -1
    for i, r in enumerate(ranges):
        if r.fi != fi:
            line, fi = 1, r.fi
        out[i] = line
        line += line_counts[i]


def _pass1(
    ctx: tasks.TaskContext,
    engine: engines.Engine,
    ranges: Sequence[ByteRange],
    state: List[_RangeState],
    given_first: Sequence[int],
    sink: RejectSink,
    counters: Dict[str, Optional[KeyCounter]],
    hashed: Dict[str, str],
    window: int,
    total_bytes: int,
) -> List[int]:
    """Validate and count; merge in input order, checking the count cap after every block."""
    cap = int(ctx.cfg.count_memory_mb * (1 << 20))
    rows_per_file = [0] * (max(r.fi for r in ranges) + 1)
    progress = Progress(ctx.cfg.progress, total_bytes, f"1/{3 if ctx.policy.needs_tail_pass else 2} count")

    def live() -> List[str]:
        return [n for n, c in counters.items() if c is not None]

    jobs = [(_label(r), (lambda i=i, r=r: (ctx, r, given_first[i], live(), str(i)))) for i, r in enumerate(ranges)]
    acc, line, fi = 0, 1, -1
    for i, res in enumerate(engines.ordered(engine, tasks.count_range, jobs, window)):
        r = ranges[i]
        if r.fi != fi:
            line, fi = 1, r.fi
        shift = line - given_first[i]
        name = Path(r.path).name
        if res.first_reject is not None and ctx.cfg.strict:
            first = res.first_reject
            sink.add([Reject(first.line + shift, first.reason, first.raw, first.file)])  # raises
        if res.rejects_file is not None:
            for rel, kind, reason, raw in tasks.read_rejects(res.rejects_file):
                sink.add_record(name, rel + given_first[i] + shift, reason, raw, kind)
            os.remove(res.rejects_file)
        state[i] = _RangeState(
            line, acc, rows_per_file[r.fi], res.accepted, res.split_rows, res.block_offsets, res.block_accepted
        )
        for uniq in res.block_uniques:
            for feature, counter in counters.items():
                if counter is not None and feature in uniq:
                    counter.add_unique(*uniq[feature])
            enforce_cap(counters, hashed, cap)
        acc += res.accepted
        rows_per_file[r.fi] += res.accepted
        line += res.lines
        progress.update(r.nbytes, res.accepted)
    progress.close()
    return rows_per_file


def _tail_ranges(
    ranges: Sequence[ByteRange], state: Sequence[_RangeState], train_end: int, pieces: int
) -> List[Tuple[ByteRange, int]]:
    """The input past the train chunk as (range, accepted rows to skip) tasks of about equal size:
    from the block that holds row `train_end` on, cut at block starts. (A gzip file cannot be
    entered mid-stream: its range is read whole.)"""
    spans: List[Tuple[int, int, int, int]] = []  # (range index, start, end, accepted rows before)
    for i, s in enumerate(state):
        acc = s.acc
        for k, (offset, n) in enumerate(zip(s.block_offsets, s.block_accepted)):
            if acc + n > train_end:
                end = s.block_offsets[k + 1] if k + 1 < len(s.block_offsets) else ranges[i].end
                spans.append((i, offset, end, acc))
            acc += n
    if any(ranges[i].gzip for i, _, _, _ in spans):
        return [(ranges[i], max(train_end - state[i].acc, 0)) for i in sorted({sp[0] for sp in spans})]
    target = sum(end - start for _, start, end, _ in spans) / max(pieces, 1)
    out: List[Tuple[ByteRange, int]] = []
    k = 0
    while k < len(spans):
        i0, start, end, acc = spans[k]
        i = i0
        k += 1
        while k < len(spans) and ranges[spans[k][0]].fi == ranges[i0].fi and end - start < target:
            i, _, end, _ = spans[k]
            k += 1
        last = ranges[i].last and end == ranges[i].end
        out.append((ByteRange(ranges[i0].fi, ranges[i0].path, start, end, False, last), max(train_end - acc, 0)))
    return out


def _tail(
    ctx: tasks.TaskContext,
    engine: engines.Engine,
    ranges: Sequence[ByteRange],
    state: Sequence[_RangeState],
    counters: Dict[str, Optional[KeyCounter]],
    train_end: int,
    window: int,
) -> None:
    """Subtract the counts of accepted rows from `train_end` on (Kaggle's val/test chunk), in tasks
    of equal size from the block that holds row train_end (counts are exact in any order, so the
    tail's blocks need not be pass 1's blocks)."""
    live = [n for n, c in counters.items() if c is not None]
    todo = _tail_ranges(ranges, state, train_end, window)
    jobs = [(_label(r), (lambda r=r, skip=skip: (ctx, r, skip, live))) for r, skip in todo]
    for uniq in engines.ordered(engine, tasks.tail_range, jobs, window):
        for feature in live:
            counter = counters[feature]
            if counter is not None:
                keys, counts = uniq[feature]
                counter.add_unique(keys, counts, sign=-1, merge=False)  # merged on the vocabulary threads


def _known_split_rows(state: Sequence[_RangeState]) -> List[List[int]]:
    """Each range's rows per split: pass 2 needs them all (run_prep derives those pass 1 left unset)."""
    known: List[List[int]] = []
    for i, s in enumerate(state):
        assert s.split_rows is not None, f"range {i}: split rows unknown before pass 2"
        known.append(s.split_rows)
    return known


class _PartAssembler:
    """Pass 2's output side: which part file needs which ranges' pieces (rows_per_file rows of a
    split each, in input order), submitting a part's assembly as soon as all its pieces exist and
    deleting a piece once every part that reads it is written."""

    def __init__(self, ctx: tasks.TaskContext, engine: engines.Engine, state: Sequence[_RangeState], tmp: Path) -> None:
        self.ctx, self.engine, self.tmp = ctx, engine, tmp
        self.per = ctx.cfg.rows_per_file
        split_rows = _known_split_rows(state)
        self.totals = [sum(rows[k] for rows in split_rows) for k in range(len(SPLITS))]
        self.starts = np.zeros((len(state) + 1, len(SPLITS)), np.int64)  # rows of each split before each range
        for i, rows in enumerate(split_rows):
            self.starts[i + 1] = self.starts[i] + np.asarray(rows)
        self.users = np.zeros((len(state), len(SPLITS)), np.int64)  # part files still to read each piece
        for k in range(len(SPLITS)):
            for i in range(len(state)):
                lo, hi = self.starts[i, k], self.starts[i + 1, k]
                if hi > lo:
                    self.users[i, k] = (hi - 1) // self.per - lo // self.per + 1
        self.pieces: List[List[Optional[str]]] = []  # per range, per split (appended as ranges finish)
        self.next_part = [0] * len(SPLITS)
        self.assembling: List[Tuple[Any, str, int, List[Tuple[int, int]]]] = []
        self.done_parts: Dict[Tuple[int, int], Tuple[List[str], int]] = {}
        # The last part of each split is written here, a piece at a time as ranges finish: it can
        # only start once the last range is encoded, and a worker writing it then would be pass 2's
        # serial tail (the whole output when a split fits one part file).
        self.last_part = [max(-(-t // self.per) - 1, -1) for t in self.totals]
        self.streams: List[Optional[SplitWriter]] = [
            SplitWriter(tmp, split, ctx.spec.schema(), ctx.cfg, first_index=self.last_part[k])
            if self.totals[k]
            else None
            for k, split in enumerate(SPLITS)
        ]

    def add_range(self, pieces: List[Optional[str]]) -> None:
        """Range i's pieces arrived (ranges arrive in input order): submit the parts now complete."""
        self.pieces.append(pieces)
        self.submit_ready(self.starts[len(self.pieces)], final=False)
        self.stream(len(self.pieces) - 1)
        self.reap(block=False)

    def stream(self, i: int) -> None:
        """Write range i's rows that belong to a split's last part into that part."""
        for k, writer in enumerate(self.streams):
            lo = self.last_part[k] * self.per
            a, b = max(lo, self.starts[i, k]), self.starts[i + 1, k]
            if writer is None or b <= a:
                continue
            piece = self.pieces[i][k]
            assert piece is not None, f"range {i} has rows of split {k} but no piece"
            tasks.copy_rows(writer, piece, int(a - self.starts[i, k]), int(b - self.starts[i, k]))
            self._used(i, k)

    def _used(self, i: int, k: int) -> None:
        self.users[i, k] -= 1
        piece = self.pieces[i][k]
        if self.users[i, k] == 0 and piece:
            os.remove(piece)

    def finish(self) -> Dict[str, Any]:
        """Submit the last parts, wait for all; meta.json's splits (files and rows)."""
        self.submit_ready(self.starts[-1], final=True)
        self.reap(block=True)
        for k, writer in enumerate(self.streams):
            if writer is not None:
                writer.close()
                self.done_parts[(k, self.last_part[k])] = (writer.files, writer.rows)
        splits_meta: Dict[str, Any] = {}
        for k, split in enumerate(SPLITS):
            files: List[str] = []
            rows = 0
            n_parts = self.last_part[k] + 1
            for p in range(n_parts):
                f, n = self.done_parts[(k, p)]
                files += f
                rows += n
            assert files == [part_file(split, p) for p in range(n_parts)] and rows == self.totals[k]
            splits_meta[split] = {"rows": rows, "files": files}
        return splits_meta

    def reap(self, block: bool) -> None:
        keep = []
        for future, label, k, used in self.assembling:
            if block or future.done():
                files, rows = engines.wait(label, future)
                self.done_parts[(k, int(label.rsplit(":", 1)[1]))] = (files, rows)
                for i, kk in used:
                    self._used(i, kk)
            else:
                keep.append((future, label, k, used))
        self.assembling[:] = keep

    def submit_ready(self, ready_rows: np.ndarray, final: bool) -> None:
        per, starts, n_ranges = self.per, self.starts, len(self.starts) - 1
        for k, split in enumerate(SPLITS):
            while self.next_part[k] < self.last_part[k]:  # the last part is streamed (stream())
                lo, hi = self.next_part[k] * per, min((self.next_part[k] + 1) * per, self.totals[k])
                if hi > ready_rows[k] and not final:
                    break
                first = int(np.searchsorted(starts[1:, k], lo, side="right"))
                spec_pieces, used = [], []
                i = first
                while i < n_ranges and starts[i, k] < hi:
                    a, b = max(lo, starts[i, k]), min(hi, starts[i + 1, k])
                    if b > a:
                        spec_pieces.append((self.pieces[i][k], int(a - starts[i, k]), int(b - starts[i, k])))
                        used.append((i, k))
                    i += 1
                future = self.engine.submit(
                    tasks.assemble_part, self.ctx, str(self.tmp), split, self.next_part[k], spec_pieces
                )
                self.assembling.append((future, f"{split} part:{self.next_part[k]}", k, used))
                self.next_part[k] += 1


def _pass2(
    ctx: tasks.TaskContext,
    engine: engines.Engine,
    ranges: Sequence[ByteRange],
    state: Sequence[_RangeState],
    tmp: Path,
    window: int,
    total_bytes: int,
) -> Tuple[Dict[str, Any], Dict[str, List[int]], int]:
    """Encode ranges into pieces, assemble part files as soon as their pieces exist."""
    sparse = ctx.spec.sparse_features
    parts = _PartAssembler(ctx, engine, state, tmp)
    zero_rows = {n: [0] * len(SPLITS) for n in sparse}
    progress = Progress(ctx.cfg.progress, total_bytes, f"{3 if ctx.policy.needs_tail_pass else 2}/.. write")
    jobs = [
        (_label(r), (lambda i=i, r=r: (ctx, r, state[i].first_line, state[i].acc, state[i].acc_file, str(i))))
        for i, r in enumerate(ranges)
    ]
    acc2 = 0
    for i, res in enumerate(engines.ordered(engine, tasks.encode_range, jobs, window)):
        if res.rows != state[i].split_rows:
            raise RuntimeError(f"input changed during preparation: {_label(ranges[i])} split rows differ")
        for n in sparse:
            for k in range(len(SPLITS)):
                zero_rows[n][k] += res.zero_rows[n][k]
        acc2 += res.accepted
        parts.add_range(res.pieces)
        progress.update(ranges[i].nbytes, res.accepted)
    splits_meta = parts.finish()
    progress.close()
    return splits_meta, zero_rows, acc2
