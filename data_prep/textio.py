"""Streaming line blocks and vectorised field parsing (numpy only, no per-row Python).

A raw input (plain or gzip, detected by magic bytes) is read in blocks of about
`block_bytes` decompressed bytes, always cut after a `\\n`, so every physical line
keeps its exact 1-based line number and raw bytes. Lines are split on `\\n` only;
one trailing `\\r` (CRLF) is stripped; a missing final newline is fine.

Fields are located with numpy on the block's byte buffer (positions of the
separator byte), and the typed parsers below validate and convert whole columns
at once. Only rejected lines are looked at again in Python (to explain why).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

DEFAULT_BLOCK_BYTES = 8 << 20
_READ_BYTES = 1 << 20  # compressed bytes per read from a gzip file
MAX_DENSE_DIGITS = 30  # longer integers are rejected (keeps the digit matrix small)
MAX_TOKEN_BYTES = 7  # short categorical tokens are packed exactly into an int64 key
_PAD = 64  # zero bytes after each block's data
# The longest line read (Criteo and Avazu rows are a few hundred bytes). Without it a file holding
# one huge line (a gzip of 6.5 MB held a 1.5 GB line) was buffered whole: memory grew with the line,
# not the block. Longer lines are refused with one line naming the file and line number.
MAX_LINE_BYTES = 1 << 20
_INFLATE_BYTES = 8 << 20  # decompressed bytes per zlib call: a 1 MB read of a gzip can inflate 1000x


def check_line_lengths(path: Union[str, Path], block: "LineBlock", numbered: bool = True) -> None:
    """Refuse a block that holds a line longer than MAX_LINE_BYTES (``numbered``: the block's line
    numbers are the file's, else the line is named by its byte offset)."""
    if block.num_lines:
        lengths = block.ends - block.starts
        i = int(np.argmax(lengths))
        if lengths[i] > MAX_LINE_BYTES:
            where = _where(path, block.first_line + i, block.offset + int(block.starts[i]), numbered)
            raise _too_long(where, f"{int(lengths[i]):,} bytes")


def check_partial_line(
    path: Union[str, Path], unterminated: int, line: int, offset: int, numbered: bool = True
) -> None:
    """Refuse as soon as the line being read (no newline yet, starting at byte ``offset``) passes
    MAX_LINE_BYTES, so it is never buffered whole."""
    if unterminated > MAX_LINE_BYTES:
        raise _too_long(_where(path, line, offset, numbered), f"more than {unterminated:,} bytes without a newline")


def _where(path: Union[str, Path], line: int, offset: int, numbered: bool) -> str:
    return f"{path}:{line}" if numbered else f"{path} (the line at byte {offset:,})"


def _too_long(where: str, what: str) -> ValueError:
    return ValueError(
        f"{where}: line of {what}, longer than the limit of {MAX_LINE_BYTES:,} bytes "
        "(rows are a few hundred bytes): not a Criteo/Avazu text file, or a damaged one"
    )


def is_gzip(path: Path) -> bool:
    """Detect gzip by magic bytes, so a .gz without the suffix (or vice versa) works."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


@dataclass
class LineBlock:
    """Complete lines of one block of one input file."""

    buf: np.ndarray  # uint8 view of the block bytes
    starts: np.ndarray  # int64 start offset of each line in buf
    ends: np.ndarray  # int64 end offset (exclusive; terminator and one trailing \r excluded)
    first_line: int  # 1-based line number of the first line in the file
    offset: int  # decompressed byte offset of the block start in the file
    src_bytes: int  # on-disk bytes consumed since the previous block (progress)
    # A truncated/corrupt gzip stream: (reason, bytes of the unterminated last line).
    truncated: Optional[Tuple[str, bytes]] = None

    @property
    def num_lines(self) -> int:
        return len(self.starts)

    def line(self, i: int) -> bytes:
        return self.buf[self.starts[i] : self.ends[i]].tobytes()

    def drop_first_line(self) -> "LineBlock":
        return LineBlock(self.buf, self.starts[1:], self.ends[1:], self.first_line + 1, self.offset, self.src_bytes)


def plain_read_bytes(block_bytes: int) -> int:
    """Bytes per read from a plain file: the block size within [64 KiB, 8 MiB]. A block is cut
    after every `attempt_bytes(block_bytes)` bytes from the file start, so block boundaries are a
    function of file positions only, which lets byte-range workers reproduce them (parallel/ranges.py)."""
    return min(max(block_bytes, 64 << 10), _READ_BYTES * 8)


def attempt_bytes(block_bytes: int) -> int:
    """Distance between the file positions at which a plain file's blocks are cut (see above)."""
    r = plain_read_bytes(block_bytes)
    return -(-block_bytes // r) * r


def _plain_chunks(
    path: Path, start: int, read_bytes: int = _READ_BYTES * 8
) -> Iterator[Tuple[bytes, int, Optional[str]]]:
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            data = f.read(read_bytes)
            if not data:
                return
            yield data, len(data), None


def _gzip_chunks(path: Path, start: int) -> Iterator[Tuple[bytes, int, Optional[str]]]:
    """Decompressed data (multi-member gzip supported); a final item with a reason if
    the stream is truncated or corrupt. The first `start` decompressed bytes are skipped."""
    skip = start
    with open(path, "rb") as f:
        d = zlib.decompressobj(wbits=47)
        pending = b""
        while True:
            raw = pending or f.read(_READ_BYTES)
            pending = b""
            if not raw:
                if not d.eof:
                    yield b"", 0, "truncated gzip stream (file ends before the end-of-stream marker)"
                return
            if d.eof:  # next gzip member (ignore zero padding after the last member)
                if not raw.strip(b"\x00"):
                    continue
                d = zlib.decompressobj(wbits=47)
            data = raw
            while True:  # at most _INFLATE_BYTES out per call: memory bounded whatever the ratio
                try:
                    out = d.decompress(data, _INFLATE_BYTES)
                except zlib.error as e:
                    yield b"", len(data), f"corrupt gzip stream ({e})"
                    return
                rest = d.unused_data if d.eof else d.unconsumed_tail
                consumed, data = len(data) - len(rest), (b"" if d.eof else rest)
                full = len(out) == _INFLATE_BYTES  # zlib may hold more output for this input
                if skip:
                    cut = min(skip, len(out))
                    out, skip = out[cut:], skip - cut
                yield out, consumed, None
                if d.eof or not (data or full):
                    break
            if d.eof and d.unused_data:
                pending = d.unused_data


def iter_line_blocks(
    path: Path, block_bytes: int = DEFAULT_BLOCK_BYTES, start_offset: int = 0, start_line: int = 1
) -> Iterator[LineBlock]:
    """LineBlocks of `path` from decompressed byte `start_offset` (a line start)."""
    chunks = (
        _gzip_chunks(path, start_offset)
        if is_gzip(path)
        else _plain_chunks(path, start_offset, plain_read_bytes(block_bytes))
    )
    parts: List[bytes] = []
    size, src = 0, 0
    carry = b""
    line, offset = start_line, start_offset
    for data, consumed, problem in chunks:
        src += consumed
        if problem is not None:
            buf = carry + b"".join(parts)
            cut = buf.rfind(b"\n") + 1
            block = make_block(buf, cut, line, offset, src, final=False)
            block.truncated = (problem, buf[cut:])
            yield block
            return
        parts.append(data)
        size += len(data)
        if size < block_bytes:
            continue
        buf = carry + b"".join(parts)
        parts, size = [], 0
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            carry = buf
            check_partial_line(path, len(carry), line, offset)
            continue
        block = make_block(buf, cut, line, offset, src, final=False)
        check_line_lengths(path, block)
        src = 0
        carry = buf[cut:]
        line += block.num_lines
        offset += cut
        check_partial_line(path, len(carry), line, offset)
        yield block
    buf = carry + b"".join(parts)
    if buf or src:
        block = make_block(buf, len(buf), line, offset, src, final=True)
        check_line_lengths(path, block)
        yield block


def make_block(buf: bytes, cut: int, first_line: int, offset: int, src: int, final: bool) -> LineBlock:
    """Lines of buf[:cut]; buf[:cut] ends with \\n unless `final` (last line unterminated)."""
    # Copy into a zero-padded array so 8-byte windows at any field start stay in bounds.
    arr = np.zeros(cut + _PAD, dtype=np.uint8)
    arr[:cut] = np.frombuffer(buf, dtype=np.uint8, count=cut)
    nl = np.flatnonzero(arr[:cut] == 10).astype(np.int64)
    ends = nl
    if final and cut and (not len(nl) or nl[-1] != cut - 1):
        ends = np.append(nl, np.int64(cut))
    starts = np.empty_like(ends)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        nonempty = ends > starts
        cr = np.zeros(len(ends), dtype=bool)
        cr[nonempty] = arr[ends[nonempty] - 1] == 13
        ends = ends - cr
    return LineBlock(arr, starts, ends, first_line, offset, src)


# ----------------------------------------------------------------------------
# Fields
# ----------------------------------------------------------------------------


def split_fields(block: LineBlock, sep: int, ncols: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(columns per line, shaped-line indices, field starts [n, ncols], field ends [n, ncols])."""
    arr, starts, ends = block.buf, block.starts, block.ends
    n = len(starts)
    if n and ncols > 1:
        # Fast path (every line has ncols fields, all end in \n, no \r): the positions of the
        # separators and newlines, in order, are the field ends row by row, and each field starts
        # one byte after the previous boundary. Half the time of the general path below.
        bounds = np.flatnonzero((arr == sep) | (arr == 10))
        if len(bounds) == n * ncols and bounds[0] >= starts[0]:  # (a dropped header line is before starts[0])
            fend = bounds.reshape(n, ncols)
            if np.array_equal(fend[:, -1], ends):
                fstart = np.empty(n * ncols, np.int64)
                fstart[0] = starts[0]
                np.add(bounds[:-1], 1, out=fstart[1:])
                return np.full(n, ncols, np.int64), np.arange(n, dtype=np.int64), fstart.reshape(n, ncols), fend
    seppos = np.flatnonzero(arr == sep).astype(np.int64)
    lo = np.searchsorted(seppos, starts)
    hi = np.searchsorted(seppos, ends)
    columns = hi - lo + 1
    shaped = np.flatnonzero((columns == ncols) & (ends > starts))
    idx = lo[shaped][:, None] + np.arange(ncols - 1, dtype=np.int64)
    s = seppos[idx] if len(shaped) else np.zeros((0, ncols - 1), np.int64)
    fstart = np.concatenate([starts[shaped][:, None], s + 1], axis=1)
    fend = np.concatenate([s, ends[shaped][:, None]], axis=1)
    return columns, shaped, fstart, fend


def _gather(arr: np.ndarray, s: np.ndarray, width: int) -> np.ndarray:
    """[n, width] bytes starting at s (clipped at the buffer end; caller masks)."""
    if len(arr) == 0:
        return np.zeros((len(s), width), np.uint8)
    return arr[np.minimum(s[:, None] + np.arange(width, dtype=np.int64), len(arr) - 1)]


def _window8(arr: np.ndarray, s: np.ndarray) -> np.ndarray:
    """[n, 8] bytes starting at s, via one 8-byte load per row (arr is zero-padded)."""
    words = np.ndarray(shape=(len(arr) - 7,), dtype=np.uint64, buffer=arr, strides=(1,))
    return words[s].view(np.uint8).reshape(len(s), 8)


def _words(arr: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The 8 bytes starting at each s as one little-endian uint64 (arr is zero-padded)."""
    return np.ndarray(shape=(len(arr) - 7,), dtype=np.uint64, buffer=arr, strides=(1,))[s]


_BYTES = {b: np.uint64(int.from_bytes(bytes([b]) * 8, "little")) for b in range(256)}  # b in every byte
_HI = _BYTES[0x80]

_DIGIT = np.full(256, 255, dtype=np.uint8)
_DIGIT[48:58] = np.arange(10)

_TOKEN_OK = np.zeros(256, dtype=bool)
for _c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._-":
    _TOKEN_OK[_c] = True
_SIGN = np.uint64(1 << 63)
_POS8 = np.arange(8)


def parse_label01(arr: np.ndarray, s: np.ndarray, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """'0' or '1' -> int8."""
    first = arr[s]
    ok = ((e - s) == 1) & ((first == 48) | (first == 49))
    return ok, (first == 49).astype(np.int8)


def parse_dense_log(arr: np.ndarray, s: np.ndarray, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Empty or -?[0-9]{1,30} -> float32 log(max(x, 0) + 1), computed in float64.

    Up to 8 digits (nearly all values): SWAR on one 8-byte load per value, the digits right-aligned
    in the word and combined by three multiply-shift steps (exact integers, as a Horner loop over an
    [n, 8] digit matrix gave, ~3x faster). Longer values take a wider per-digit gather."""
    n = len(s)
    length = e - s
    neg = (length > 0) & (arr[s] == 45)
    digits = length - neg
    ok = (digits <= MAX_DENSE_DIGITS) & (~neg | (digits >= 1))
    if not n:
        return ok, np.zeros(0, np.float32)
    short = digits <= 8
    nd = np.clip(digits, 0, 8).astype(np.uint64)
    x = _words(arr, s + neg) ^ _BYTES[0x30]  # digit bytes -> 0..9
    x &= np.where(nd >= 8, np.uint64(2**64 - 1), (np.uint64(1) << (np.uint64(8) * nd)) - np.uint64(1))
    ok &= ~short | (((x & _BYTES[0xF0]) == 0) & (((x + _BYTES[0x06]) & _BYTES[0xF0]) == 0))
    x <<= np.minimum(np.uint64(8) * (np.uint64(8) - nd), np.uint64(56))  # last digit in the top byte
    x = ((x & _BYTES[0x0F]) * np.uint64(10 * 2**8 + 1)) >> np.uint64(8)
    x = ((x & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(100 * 2**16 + 1)) >> np.uint64(16)
    x = ((x & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(10000 * 2**32 + 1)) >> np.uint64(32)
    value = x.astype(np.float64)
    long_rows = np.flatnonzero(~short & ok)
    if len(long_rows):  # 9-30 digits: rare, wider gather
        ls, ld = s[long_rows] + neg[long_rows], digits[long_rows]
        m = _DIGIT[_gather(arr, ls, MAX_DENSE_DIGITS)]
        lmask = np.arange(MAX_DENSE_DIGITS) < ld[:, None]
        ok[long_rows] &= ((m < 10) | ~lmask).all(axis=1)
        power = 10.0 ** (ld[:, None] - 1 - np.arange(MAX_DENSE_DIGITS))
        value[long_rows] = np.where(lmask, m * power, 0.0).sum(axis=1)
    value[neg | ~ok] = 0.0
    return ok, np.log1p(value).astype(np.float32)


def parse_hex8(arr: np.ndarray, s: np.ndarray, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Empty or 8 lowercase hex digits -> int64 key: -1 for empty, else the 32-bit value.
    Key order equals the byte order of the raw values. The keys of values that are not ok are
    unspecified (callers keep only ok rows).

    SWAR on one 8-byte load per value (whole-word uint64 arithmetic, no per-byte [n, 8] arrays):
    about 3x faster than a byte table lookup + row reductions, the same keys and ok mask."""
    length = e - s
    w = _words(arr, s)
    full = length == 8
    # nibble per byte: '0'-'9' -> 0-9, 'a'-'f' (bit 6 set) -> 1-6 + 9; any byte -> 0..24
    nib = (w & _BYTES[0x0F]) + ((w >> np.uint64(6)) & _BYTES[0x01]) * np.uint64(9)
    # valid iff every byte is how its nibble (<= 15) is written: '0' + nib, or from 10 on 'a' + nib - 10
    written = nib + _BYTES[0x30] + (((nib + _BYTES[0x76]) & _HI) >> np.uint64(7)) * np.uint64(0x27)
    ok = (length == 0) | (full & (written == w) & (((nib + _BYTES[0x70]) & _HI) == 0))
    lane = np.uint64(0x000F000F000F000F)
    p = ((nib & lane) << np.uint64(4)) | ((nib >> np.uint64(8)) & lane)  # 16-bit lane j: digits 2j, 2j+1
    p = (p | (p >> np.uint64(8))) & np.uint64(0x0000FFFF0000FFFF)
    p = (p | (p >> np.uint64(16))) & np.uint64(0xFFFFFFFF)  # the value's bytes, most significant first
    return ok, np.where(full, p.astype(np.uint32).byteswap().astype(np.int64), -1)


def parse_token7(arr: np.ndarray, s: np.ndarray, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """0-7 bytes of [0-9A-Za-z._-] -> int64 key packing the bytes and the length exactly.
    Key order equals the byte order of the raw values."""
    length = e - s
    raw = _window8(arr, s).copy()
    mask = _POS8 < length[:, None]
    ok = (length <= MAX_TOKEN_BYTES) & (_TOKEN_OK[raw] | ~mask).all(axis=1)
    raw[~mask] = 0
    raw[:, 7] = np.minimum(length, MAX_TOKEN_BYTES)
    packed = raw.view(">u8").reshape(-1).astype(np.uint64)
    return ok, (packed ^ _SIGN).view(np.int64)


def parse_yymmddhh(arr: np.ndarray, s: np.ndarray, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Avazu `hour` YYMMDDHH (20YY) -> (ok, hour of day 0-23, weekday 0=Monday..6) as float32."""
    d = _gather(arr, s, 8).astype(np.int64) - 48
    ok = ((e - s) == 8) & ((d >= 0) & (d <= 9)).all(axis=1)
    yy, mm, dd, hh = (d[:, 2 * i] * 10 + d[:, 2 * i + 1] for i in range(4))
    ok &= (mm >= 1) & (mm <= 12) & (hh <= 23) & (dd >= 1)
    month = np.where(ok, (2000 + yy - 1970) * 12 + mm - 1, 0).astype("datetime64[M]")
    first = month.astype("datetime64[D]")
    days_in_month = ((month + 1).astype("datetime64[D]") - first).astype(np.int64)
    ok &= dd <= days_in_month
    day = first.astype(np.int64) + np.where(ok, dd - 1, 0)
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
    return ok, np.where(ok, hh, 0).astype(np.float32), weekday.astype(np.float32)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Deterministic 64-bit mixing of int64/uint64 values (vectorised)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
