"""Byte ranges of input files for the prep tasks, cut exactly where one reader of the whole file cuts blocks.

A plain file's blocks (textio.iter_line_blocks) end after the last `\\n` before every multiple of
`attempt_bytes(block_bytes)` from the file start. Ranges are unions of whole blocks, and
`iter_range_blocks` yields the very blocks that reader would: the same lines, the same block
boundaries. That matters for one thing only, the `count_memory_mb` cap, which is checked after every
block; with identical blocks every worker count (hence every cut into ranges) hashes exactly the
same features. A gzip file cannot be entered mid-stream, so it is one range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence

from data_prep import textio

_BACK = 1 << 16  # bytes read at a time when looking back for a newline


@dataclass(frozen=True)
class ByteRange:
    """Decompressed bytes [start, end) of input file `fi`; whole file if gzip."""

    fi: int
    path: str
    start: int
    end: int  # file size for the last range (or the gzip file's on-disk size: read to the end)
    gzip: bool
    last: bool  # the file's last range (reads to EOF)

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _line_start_before(f, pos: int, floor: int) -> int:
    """Position just after the last `\\n` in [floor, pos), or `floor` if there is none."""
    hi = pos
    while hi > floor:
        lo = max(floor, hi - _BACK)
        f.seek(lo)
        i = f.read(hi - lo).rfind(b"\n")
        if i >= 0:
            return lo + i + 1
        hi = lo
    return floor


def plan_ranges(paths: Sequence[Path], block_bytes: int, target_bytes: int) -> List[ByteRange]:
    """Ranges of about `target_bytes` (whole blocks), in input order."""
    out: List[ByteRange] = []
    step = textio.attempt_bytes(block_bytes)
    per_range = max(1, target_bytes // step) * step
    for fi, path in enumerate(paths):
        size = path.stat().st_size
        if textio.is_gzip(path):
            out.append(ByteRange(fi, str(path), 0, size, True, True))
            continue
        cuts = [0]
        with open(path, "rb") as f:
            pos = per_range
            while pos < size:
                cut = _line_start_before(f, pos, cuts[-1])
                if cut > cuts[-1]:
                    cuts.append(cut)
                pos += per_range
        cuts.append(size)
        for k in range(len(cuts) - 1):
            out.append(ByteRange(fi, str(path), cuts[k], cuts[k + 1], False, k == len(cuts) - 2))
    return out


def _cut_point(pos: int, rng: ByteRange, step: int, block_bytes: int) -> bool:
    """Whether a reader of the whole file cuts a block at `pos`: at every multiple of `step`, at a
    range end (a line start by construction), and at EOF if at least `block_bytes` were read since
    the last multiple of `step` (its short last read still fills a block)."""
    if pos % step == 0 or (pos == rng.end and not rng.last):
        return True
    return pos == rng.end and pos % step >= block_bytes


def iter_range_blocks(rng: ByteRange, block_bytes: int, first_line: int = 1) -> Iterator[textio.LineBlock]:
    """The blocks of `rng`, identical to those textio.iter_line_blocks yields for the whole file
    (line numbers counted from `first_line`)."""
    if rng.gzip:
        yield from textio.iter_line_blocks(Path(rng.path), block_bytes, 0, first_line)
        return
    step = textio.attempt_bytes(block_bytes)
    line, offset, carry = first_line, rng.start, b""
    with open(rng.path, "rb") as f:
        f.seek(rng.start)
        pos = rng.start
        while pos < rng.end:
            nxt = min((pos // step + 1) * step, rng.end)
            data = f.read(nxt - pos)
            if len(data) != nxt - pos:
                raise RuntimeError(f"{rng.path}: file shrank while reading bytes {pos}-{nxt}")
            src = len(data)
            pos = nxt
            buf = carry + data
            if not _cut_point(nxt, rng, step, block_bytes):
                carry = buf  # a reader of the whole file does not cut here
                continue
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                carry = buf
                textio.check_partial_line(rng.path, len(carry), line, offset, numbered=False)
                continue
            block = textio.make_block(buf, cut, line, offset, src, final=False)
            textio.check_line_lengths(rng.path, block, numbered=False)  # lines count from the range
            carry = buf[cut:]
            line += block.num_lines
            offset += cut
            textio.check_partial_line(rng.path, len(carry), line, offset, numbered=False)
            yield block
        if carry:
            block = textio.make_block(carry, len(carry), line, offset, 0, final=True)
            textio.check_line_lengths(rng.path, block, numbered=False)
            yield block


def count_lines(rng: ByteRange) -> int:
    """Physical lines whose first byte lies in the range (a final unterminated line counts)."""
    n, last = 0, b"\n"
    with open(rng.path, "rb") as f:
        f.seek(rng.start)
        left = rng.nbytes
        while left > 0:
            data = f.read(min(left, 8 << 20))
            if not data:
                break
            n += data.count(b"\n")
            last = data[-1:]
            left -= len(data)
    return n + (1 if rng.last and last != b"\n" and rng.nbytes else 0)
