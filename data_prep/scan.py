"""Reading one input file as parsed blocks, on a few threads, with a progress bar.

`scan` yields blocks in input order while up to `threads` blocks are parsed (and given to a
per-block `work` function) at once; numpy releases the GIL, so this is what makes one process
use a few cores. A `Checkpoint` lets a later pass restart mid-file (Kaggle's tail pass).
"""

from __future__ import annotations

import collections
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Iterator, List, Optional, Tuple

from data_prep import textio
from data_prep.spec import DatasetSpec, Parsed, PrepConfig, Reject, parse_block

class Progress:
    """tqdm bar over on-disk input bytes (MB/s), with rows and rows/s in the postfix."""

    def __init__(self, enabled: bool, total_bytes: int, desc: str, unit: str = "B") -> None:
        self.bar = None
        self.rows = 0
        self.t0 = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_bytes, unit=unit, unit_scale=True, unit_divisor=1_000_000 if unit == "B" else 1000,
                desc=desc, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5,
            )

    def update(self, nbytes: int, rows: int) -> None:
        self.rows += rows
        if self.bar is not None:
            rate = self.rows / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.rows:,} rows, {rate:,.0f} rows/s", refresh=False)
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()



@dataclass
class Checkpoint:
    fi: int
    offset: int
    first_line: int
    acc: int  # accepted rows before this block, overall
    acc_file: int  # ... in its file


def scan(
    spec: DatasetSpec,
    path: Path,
    cfg: PrepConfig,
    progress: Progress,
    start: Optional[Checkpoint] = None,
    work: Optional[Callable[[Parsed], Any]] = None,
) -> Iterator[Tuple[textio.LineBlock, Parsed, List[Reject], Any]]:
    """Parsed blocks of one file, in order; the third item adds a truncated-gzip
    reject, the fourth is work(parsed). Parsing and `work` run on a few threads
    (numpy releases the GIL), with a bounded number of blocks in flight."""
    offset, line = (start.offset, start.first_line) if start else (0, 1)

    def job(block: textio.LineBlock) -> Tuple[textio.LineBlock, Parsed, Any]:
        parsed = parse_block(spec, block, path.name)
        return block, parsed, (work(parsed) if work is not None else None)

    def blocks() -> Iterator[textio.LineBlock]:
        for block in textio.iter_line_blocks(path, cfg.block_bytes, offset, line):
            if spec.header is not None and block.first_line == 1 and block.num_lines:
                first = block.line(0)
                if first != spec.header:
                    raise ValueError(
                        f"{path}:1: expected the header line {spec.header.decode()!r}, got {first[:200]!r}"
                    )
                block = block.drop_first_line()
            yield block

    workers = max(1, min(cfg.threads, 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        inflight: Deque[Future] = collections.deque()
        source = blocks()
        try:
            for block in source:
                inflight.append(pool.submit(job, block))
                if len(inflight) > workers:
                    yield _finish(inflight.popleft().result(), path, progress)
            while inflight:
                yield _finish(inflight.popleft().result(), path, progress)
        finally:
            for f in inflight:
                f.cancel()


def _finish(
    done: Tuple[textio.LineBlock, Parsed, Any], path: Path, progress: Progress
) -> Tuple[textio.LineBlock, Parsed, List[Reject], Any]:
    block, parsed, result = done
    extra: List[Reject] = []
    if block.truncated is not None:
        reason, tail = block.truncated
        if tail:
            reason += f"; last line incomplete ({len(tail)} bytes)"
        extra.append(Reject(block.first_line + block.num_lines, reason, tail, path.name))
    progress.update(block.src_bytes, len(parsed.lines))
    return block, parsed, extra, result


def approx_offset(path: Path, offset: int) -> int:
    """On-disk bytes before a decompressed offset (exact for plain files)."""
    return 0 if textio.is_gzip(path) else offset

