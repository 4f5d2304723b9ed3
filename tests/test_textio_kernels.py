"""data_prep.textio's word-at-a-time (SWAR) field kernels and split_fields' fast path against a plain
Python reading of the same bytes, on random fields that mix valid values with every kind of bad byte
(issue #17: the kernels were rewritten for speed and must not change a value or a verdict)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

from data_prep import textio

_ALPHABETS = [
    b"0123456789",
    b"0123456789abcdef",
    b"0123456789abcdefABCDEFg-+/:. \x00\x7f\x80\xff\x2f\x3a\x60\x67",
    bytes(range(256)),
]


def _random_fields(rng: np.random.Generator, n: int, max_len: int) -> List[bytes]:
    out = []
    for _ in range(n):
        alphabet = _ALPHABETS[rng.integers(len(_ALPHABETS))]
        length = int(rng.integers(0, max_len + 1)) if rng.random() < 0.7 else int(rng.choice([0, 1, 7, 8, 9]))
        value = bytes(rng.choice(list(alphabet), length).astype(np.uint8)) if length else b""
        out.append(b"-" + value if value and rng.random() < 0.2 else value)
    return out


def _buffer(values: List[bytes]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tab-joined values in a zero-padded buffer (as make_block pads), with their start/end offsets."""
    lengths = np.array([len(v) for v in values], np.int64)
    ends = np.cumsum(lengths) + np.arange(len(values))
    data = b"\t".join(values)
    arr = np.zeros(len(data) + 64, np.uint8)
    arr[: len(data)] = np.frombuffer(data, np.uint8)
    return arr, ends - lengths, ends


@pytest.mark.parametrize("seed", range(4))
def test_hex8_matches_python(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = _random_fields(rng, 4000, 10)
    arr, s, e = _buffer(values)
    ok, keys = textio.parse_hex8(arr, s, e)
    want_ok = [re.fullmatch(rb"([0-9a-f]{8})?", v) is not None for v in values]
    assert ok.tolist() == want_ok
    assert 300 < sum(want_ok) < 3700  # both verdicts well represented
    want = [int(v, 16) if len(v) == 8 else -1 for v, good in zip(values, want_ok) if good]
    assert keys[ok].tolist() == want


@pytest.mark.parametrize("seed", range(4))
def test_dense_log_matches_python(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    values = _random_fields(rng, 4000, int(rng.choice([9, 35])))
    values += [b"0", b"00000000", b"99999999", b"-99999999", b"12345678", b"1" * 30, b"1" * 31, b"-0"]
    arr, s, e = _buffer(values)
    ok, got = textio.parse_dense_log(arr, s, e)
    want_ok = [re.fullmatch(rb"(-?[0-9]{1,%d})?" % textio.MAX_DENSE_DIGITS, v) is not None for v in values]
    assert ok.tolist() == want_ok
    assert 300 < sum(want_ok) < 3700
    short = [i for i, v in enumerate(values) if want_ok[i] and len(v.lstrip(b"-")) <= 15]
    exact = [np.float32(np.log1p(float(max(int(values[i] or b"0"), 0)))) for i in short]
    assert got[short].view(np.int32).tolist() == np.array(exact, np.float32).view(np.int32).tolist()  # bit-exact
    long = [i for i, v in enumerate(values) if want_ok[i] and len(v.lstrip(b"-")) > 15]
    want_long = [np.log1p(float(max(int(values[i]), 0))) for i in long]
    assert np.allclose(got[long], np.array(want_long, np.float32), rtol=1e-6)
    assert np.all(got[~ok] == 0)


def _block(data: bytes, drop_first: bool) -> textio.LineBlock:
    block = textio.make_block(data, len(data), 1, 0, 0, final=True)
    return block.drop_first_line() if drop_first and block.num_lines > 1 else block


@pytest.mark.parametrize("seed", range(3))
def test_split_fields_matches_python(seed: int) -> None:
    """Both paths (the fast one when every line is well-formed and \\n-terminated, the general one
    otherwise), including a dropped header line and CRLF lines."""
    rng = np.random.default_rng(200 + seed)
    fast = 0
    for _ in range(600):
        ncols = int(rng.choice([2, 3, 5]))
        lines = []
        for _ in range(int(rng.integers(1, 8))):
            k = ncols if rng.random() < 0.85 else int(rng.integers(0, 7))
            fields = [bytes(rng.choice(list(b"ab1"), int(rng.integers(0, 3))).astype(np.uint8)) for _ in range(k)]
            lines.append(b"\t".join(fields) + (b"\r" if rng.random() < 0.05 else b""))
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.8 else b"")
        for drop_first in (False, True):
            block = _block(data, drop_first)
            columns, shaped, fs, fe = textio.split_fields(block, 9, ncols)
            raw = [block.line(i).split(b"\t") for i in range(block.num_lines)]
            assert columns.tolist() == [len(r) for r in raw]
            want_shaped = [i for i, r in enumerate(raw) if len(r) == ncols and block.line(i)]
            assert shaped.tolist() == want_shaped
            got = [[block.buf[a:b].tobytes() for a, b in zip(fs[k], fe[k])] for k in range(len(shaped))]
            assert got == [raw[i] for i in want_shaped]
            fast += len(want_shaped) == block.num_lines and b"\r" not in data and data.endswith(b"\n")
    assert fast > 100  # the fast path was exercised


def _corrupt(lines: List[bytes], rng: np.random.Generator) -> bytes:
    """Every 7th line damaged in a random way (a byte changed, a field dropped, emptied)."""
    out = []
    for i, line in enumerate(lines):
        if i % 7 == 3:
            kind = i % 3
            if kind == 0:
                pos = int(rng.integers(len(line)))
                line = line[:pos] + b"Z" + line[pos + 1 :]
            elif kind == 1:
                line = line.rsplit(b"\t" if b"\t" in line else b",", 1)[0]
            else:
                line = b""
        out.append(line)
    return b"\n".join(out) + b"\n"


@pytest.mark.parametrize("dataset", ["criteo", "avazu"])
def test_parse_block_in_row_chunks_is_the_whole_block(dataset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """parse_block parses a block PARSE_CHUNK_ROWS rows at a time; any chunking gives the same rows,
    values, keys and rejects as one chunk."""
    from data_prep import spec as spec_module
    from data_prep.avazu import AVAZU_SPEC
    from data_prep.criteo import criteo_spec

    samples = Path(__file__).resolve().parents[1] / "data_prep" / "samples"
    if dataset == "criteo":
        spec, lines = criteo_spec("criteo_kaggle"), (samples / "criteo_sample.tsv").read_bytes().splitlines()[:500]
    else:
        spec, lines = AVAZU_SPEC, (samples / "avazu_sample.csv").read_bytes().splitlines()[1:501]
    data = _corrupt(lines, np.random.default_rng(7))
    block = textio.make_block(data, len(data), 1, 0, 0, final=True)

    def parse(rows: int) -> spec_module.Parsed:
        monkeypatch.setattr(spec_module, "PARSE_CHUNK_ROWS", rows)
        return spec_module.parse_block(spec, block, "x")

    whole = parse(1 << 20)
    assert 50 < len(whole.rejects) < 100 and len(whole.lines) + len(whole.rejects) == 500
    for rows in (1, 7, 64, 499):
        got = parse(rows)
        assert got.lines.tolist() == whole.lines.tolist() and got.label.tolist() == whole.label.tolist()
        assert got.rejects == whole.rejects
        assert got.dense.keys() == whole.dense.keys() and got.keys.keys() == whole.keys.keys()
        for name in whole.dense:
            assert got.dense[name].tobytes() == whole.dense[name].tobytes(), (rows, name)
        for name in whole.keys:
            assert got.keys[name].tolist() == whole.keys[name].tolist(), (rows, name)


def _binary_search_ids(keys: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    if not len(keys):
        return np.zeros(len(queries), np.int64)
    pos = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[pos] == queries, ids[pos], 0)


@pytest.mark.parametrize("n", [0, 1, 2, 9, 1000, 70_000])
def test_key_table_encodes_as_the_binary_search(n: int, tmp_path: Path) -> None:
    """FeatureVocab.encode through the hash table (KeyTable) gives the ids of a binary search over the
    sorted keys, for present and absent keys, hex8 keys (dense 32-bit values and -1) and full-range
    int64 keys including the table's free-slot marker (an empty token7 value's key); so does a table
    saved and memory-mapped back (what parallel workers encode with)."""
    from data_prep.vocab_build import FeatureVocab, KeyTable

    rng = np.random.default_rng(n)
    lo = np.iinfo(np.int64).min
    for space in ("hex8", "int64"):
        if space == "hex8":
            pool = np.r_[-1, rng.integers(0, 2**32, 2 * n + 10)]
        else:
            pool = np.r_[lo, lo + 1, -1, 0, rng.integers(lo, 2**63 - 1, 2 * n + 10, dtype=np.int64)]
        pool = np.unique(pool)
        keys = np.sort(rng.choice(pool, min(n, len(pool)), replace=False))
        if space == "int64" and n:
            keys[0] = lo  # the smallest pool value: keys stay distinct and sorted
        ids = rng.permutation(len(keys)).astype(np.int64) + 1
        queries = np.r_[lo, -1, rng.choice(pool, 5000)]
        want = _binary_search_ids(keys, ids, queries)
        assert (want > 0).any() == (n > 0) and (want == 0).any()
        vocab = FeatureVocab(size=len(keys) + 1, sorted_keys=keys, ids=ids)
        assert vocab.encode(queries).tolist() == want.tolist()
        assert (vocab._table is not None) == (n > 0)
        KeyTable(keys, ids).save(tmp_path / f"{space}.npy")
        loaded = FeatureVocab.from_table(len(keys) + 1, KeyTable.load(tmp_path / f"{space}.npy"))
        assert loaded.encode(queries).tolist() == want.tolist()


@pytest.mark.parametrize("with_empty", [False, True])
@pytest.mark.parametrize("with_max", [False, True])
def test_unique_counts_of_hex_keys_are_numpys(with_empty: bool, with_max: bool) -> None:
    """The uint32 path of unique_counts (hex8 keys: -1 and 32-bit values) returns exactly numpy's
    int64 unique and counts, with and without empty values (-1) and the value ffffffff, whose
    uint32 forms collide."""
    from data_prep.vocab_build import unique_counts

    rng = np.random.default_rng(int(with_empty) * 2 + int(with_max))
    keys = rng.integers(0, 2**32 - 1, 20_000)
    keys[rng.random(len(keys)) < 0.3] = rng.integers(0, 50, 1)  # repeats
    if with_empty:
        keys[rng.random(len(keys)) < 0.2] = -1
    if with_max:
        keys[rng.random(len(keys)) < 0.05] = 2**32 - 1
    for block in (keys, keys[:1], keys[keys < 0], keys[keys == 2**32 - 1]):
        if len(block):
            want_u, want_c = np.unique(block, return_counts=True)
            got_u, got_c = unique_counts(block)
            assert got_u.dtype == np.int64 and got_u.tolist() == want_u.tolist() and got_c.tolist() == want_c.tolist()


def test_unique_counts_are_numpys_in_any_order() -> None:
    """unique_counts holds numpy unique's distinct keys and counts (checked in any order);
    KeyCounter's merged counts are the same as when every block was counted by numpy."""
    from data_prep.vocab_build import KeyCounter, unique_counts

    rng = np.random.default_rng(5)
    lo = np.iinfo(np.int64).min
    blocks = [np.r_[lo, -1, rng.integers(0, 300, 2000)], np.zeros(0, np.int64), rng.integers(-5, 5, 100)]
    counter, reference = KeyCounter(), KeyCounter()
    for keys in blocks:
        u, c = unique_counts(keys)
        order = np.argsort(u)
        want_u, want_c = np.unique(keys, return_counts=True)
        assert u.dtype == c.dtype == np.int64
        assert u[order].tolist() == want_u.tolist() and c[order].tolist() == want_c.tolist()
        counter.add_unique(u, c)
        reference.add_unique(want_u, want_c)
    counter.consolidate()
    reference.consolidate()
    assert counter.keys.tolist() == reference.keys.tolist() and counter.counts.tolist() == reference.counts.tolist()


def test_hex8_every_byte_in_every_position() -> None:
    """Each of the 256 byte values at each of the 8 positions of a valid value: exactly the lowercase
    hex digits keep it valid, with the right key."""
    values = [b"0123abcd"[:pos] + bytes([b]) + b"0123abcd"[pos + 1 :] for b in range(256) for pos in range(8)]
    arr, s, e = _buffer(values)
    ok, keys = textio.parse_hex8(arr, s, e)
    want_ok = [re.fullmatch(rb"[0-9a-f]{8}", v) is not None for v in values]
    assert ok.tolist() == want_ok and sum(want_ok) == 16 * 8
    assert keys[ok].tolist() == [int(v, 16) for v, good in zip(values, want_ok) if good]
