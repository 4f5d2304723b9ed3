"""Train-split value counts -> per-feature vocabularies (or hashing), in bounded memory.

Counting is exact (`KeyCounter`: sorted unique int64 keys and their counts) until the counts pass
`count_memory_mb`; then the feature with the most distinct values is switched to hashing
(`enforce_cap`). `finish_vocabs` turns the final counts into ids (1.. by descending count, then
ascending raw value; 0 = rare/unseen) and `save_vocabularies` writes them as OUT/vocab/ so later
data can be encoded with the same ids (vocabulary.py, --vocab-from).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_prep import textio
from data_prep.spec import DatasetSpec, PrepConfig
from data_prep.vocabulary import VOCAB_DIR, entry_sha256, write_feature_vocab

# Buckets used when the memory cap forces hashing and no --hash-size was given
# (the reference DLRM's usual --max-ind-range for Criteo Terabyte).
DEFAULT_FALLBACK_HASH_SIZE = 40_000_000

_U32_MAX = (1 << 32) - 1


def unique_counts(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct keys, ascending, and their counts. (Arrow's hash-based value_counts is ~1.6x faster
    here, but its unsorted output made KeyCounter's merge sort ~3x slower: a net loss.)

    Keys of hex8 values (-1 for empty, else 32-bit) are sorted as uint32, ~1.6x faster than as
    int64; -1 wraps to 2**32 - 1 there and is moved back to the front with its own count."""
    if keys.dtype != np.int64 or not len(keys):
        return np.unique(keys, return_counts=True)
    lo, hi = int(keys.min()), int(keys.max())
    if lo < -1 or hi > _U32_MAX:
        return np.unique(keys, return_counts=True)
    u, c = np.unique(keys.astype(np.uint32), return_counts=True)
    u = u.astype(np.int64)
    if lo == -1:  # u[-1] is 2**32 - 1: the empty values, and the value ffffffff if present
        empty = int(c[-1]) if hi < _U32_MAX else int(np.count_nonzero(keys == -1))
        if c[-1] == empty:
            u, c = u[:-1], c[:-1]
        else:
            c[-1] -= empty
        u, c = np.r_[np.int64(-1), u], np.r_[np.int64(empty), c]
    return u, c


_EMPTY = np.iinfo(np.int64).min  # a free slot (a key equal to it is kept aside)
_FIB = np.uint64(0x9E3779B97F4A7C15)


class KeyTable:
    """Distinct int64 keys -> int64 values (absent: 0) in an open-addressing hash table (linear
    probing, at most half full), built and probed with whole-array numpy operations: each round
    handles every key still unresolved, so a lookup costs a few gathers per key instead of a
    binary search's ~log2(n) dependent cache misses."""

    def __init__(self, keys: np.ndarray, values: np.ndarray) -> None:
        bits = max((2 * len(keys) - 1).bit_length(), 4)  # 2**bits >= 2 * len(keys)
        self._shift, self._mask = np.uint64(64 - bits), (1 << bits) - 1
        # One row per slot, (key, value): a probe fetches both from one cache line (np.take of rows).
        self._slots = np.zeros((1 << bits, 2), np.int64)
        self._slots[:, 0] = _EMPTY
        self._keys, self._values = self._slots[:, 0], self._slots[:, 1]
        self._fill(np.asarray(keys, np.int64), np.asarray(values, np.int64))

    def save(self, path: Path) -> None:
        """The built table as one .npy (the slot rows, then the aside key's value as one more row),
        which `load` memory-maps: worker processes share it instead of each rebuilding it."""
        np.save(path, np.concatenate([self._slots, [[self._empty_value, 0]]]))

    @classmethod
    def load(cls, path: Path) -> "KeyTable":
        rows = np.load(path, mmap_mode="r")
        slots = len(rows) - 1
        if rows.ndim != 2 or rows.shape[1] != 2 or rows.dtype != np.int64 or slots < 16 or slots & (slots - 1):
            raise ValueError(f"{path}: not a KeyTable file (shape {rows.shape}, {rows.dtype})")
        table = cls.__new__(cls)
        bits = slots.bit_length() - 1
        table._shift, table._mask = np.uint64(64 - bits), slots - 1
        table._slots = rows[:slots]
        table._keys, table._values = table._slots[:, 0], table._slots[:, 1]
        table._empty_value = int(rows[slots, 0])
        return table

    def _fill(self, keys: np.ndarray, values: np.ndarray) -> None:
        aside = keys == _EMPTY
        self._empty_value = int(values[aside][0]) if aside.any() else 0
        keys, values = keys[~aside], values[~aside]
        slot = self._slot(keys)
        while len(keys):
            free = np.flatnonzero(self._keys[slot] == _EMPTY)
            self._keys[slot[free]] = keys[free]  # keys that share a free slot: one of them lands
            landed = free[self._keys[slot[free]] == keys[free]]
            self._values[slot[landed]] = values[landed]
            rest = np.ones(len(keys), bool)
            rest[landed] = False
            keys, values, slot = keys[rest], values[rest], (slot[rest] + 1) & self._mask

    def _slot(self, keys: np.ndarray) -> np.ndarray:
        return ((keys.view(np.uint64) * _FIB) >> self._shift).astype(np.int64)  # Fibonacci hashing

    def get(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, np.int64)
        # First probe of every key with whole-array gathers (most keys end here), then rounds over
        # the keys still probing. A key equal to the free-slot marker is answered at the end.
        slot = self._slot(keys)
        rows = np.take(self._slots, slot, axis=0)
        found = rows[:, 0]
        hit = found == keys
        out = np.where(hit, rows[:, 1], 0)
        todo = np.flatnonzero(~hit & (found != _EMPTY) & (keys != _EMPTY))
        k, slot = keys[todo], (slot[todo] + 1) & self._mask
        while len(todo):
            found = self._keys[slot]
            hit = found == k
            out[todo[hit]] = self._values[slot[hit]]
            go = ~hit & (found != _EMPTY)
            todo, k, slot = todo[go], k[go], (slot[go] + 1) & self._mask
        aside = keys == _EMPTY
        if aside.any():
            out[aside] = self._empty_value
        return out


class KeyCounter:
    """Exact counts of int64 keys: sorted unique keys + counts, merged lazily."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self._pending: List[Tuple[np.ndarray, np.ndarray]] = []
        self._pending_len = 0

    def add(self, keys: np.ndarray, sign: int = 1) -> None:
        self.add_unique(*unique_counts(keys), sign=sign)

    def add_unique(self, u: np.ndarray, c: np.ndarray, sign: int = 1, merge: bool = True) -> None:
        """Add counts `c` of distinct keys `u` (as from unique_counts); with merge=False the merge
        waits for the next consolidate() (finish_vocabs runs those on threads)."""
        if not len(u):
            return
        self._pending.append((u, c.astype(np.int64) * sign))
        self._pending_len += len(u)
        if merge and self._pending_len > max(len(self.keys), 1 << 18):
            self.consolidate()

    def consolidate(self) -> None:
        if not self._pending:
            return
        k = np.concatenate([self.keys] + [p[0] for p in self._pending])
        c = np.concatenate([self.counts] + [p[1] for p in self._pending])
        self._pending, self._pending_len = [], 0
        order = np.argsort(k, kind="stable")
        k, c = k[order], c[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        k, c = k[starts], np.add.reduceat(c, starts) if len(c) else c
        nonzero = c != 0
        self.keys, self.counts = k[nonzero], c[nonzero]

    @property
    def nbytes(self) -> int:
        return 16 * (len(self.keys) + self._pending_len)


# Every exact vocabulary encodes through a KeyTable, whatever its size: a binary search per key was
# about 4x slower at 100k values and 24x at 3M (cache misses grow with the keys), and vocabularies
# above the 2M values a table was once limited to are the ones that need the speed (Criteo Kaggle:
# six features of 2.2M-10.1M values). A table costs 32-64 bytes per value (10.1M values: 512 MiB),
# saved once and memory-mapped by every worker (save_tables), where the binary search had each
# worker hold the feature's 16 bytes per value of sorted keys and ids.
_TABLE_LOCK = threading.Lock()


@dataclass
class FeatureVocab:
    """Value key -> id for one feature: exact vocabulary, or hashing."""

    size: int  # table size (ids in [0, size))
    hashed: bool = False
    sorted_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # kept keys, ascending
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # id of each sorted key
    _table: Optional[KeyTable] = field(default=None, init=False, repr=False, compare=False)

    def encode(self, keys: np.ndarray) -> np.ndarray:
        if self.hashed:
            return (textio.splitmix64(keys) % np.uint64(self.size)).astype(np.int64)
        table = self.table()
        return np.zeros(len(keys), np.int64) if table is None else table.get(keys)

    def table(self) -> Optional[KeyTable]:
        """The lookup table an exact vocabulary encodes through, built on first use (None: hashed
        or empty)."""
        if self._table is None and not self.hashed and len(self.sorted_keys):
            with _TABLE_LOCK:  # threads may encode blocks of the same feature at once
                if self._table is None:
                    self._table = KeyTable(self.sorted_keys, self.ids)
        return self._table

    def drop_table(self) -> None:
        """Free the built table (saved for the workers, it is theirs to memory-map)."""
        self._table = None

    @classmethod
    def from_table(cls, size: int, table: KeyTable) -> "FeatureVocab":
        """An exact vocabulary that encodes through an already built (memory-mapped) KeyTable."""
        vocab = cls(size=size)
        vocab._table = table
        return vocab


def save_tables(vocabs: Dict[str, FeatureVocab], out: Path, threads: int) -> Dict[str, str]:
    """Build the KeyTable of each exact vocabulary that encodes through one and save it under `out`
    (parallel pass 2: built once here instead of once per worker); feature -> file."""
    out.mkdir(parents=True, exist_ok=True)

    def one(name: str) -> Optional[str]:
        table = vocabs[name].table()
        if table is None:
            return None
        table.save(out / f"{name}.npy")
        vocabs[name].drop_table()  # tables of millions of values: one in memory per thread, not all
        return str(out / f"{name}.npy")

    with ThreadPoolExecutor(threads) as pool:
        saved = dict(zip(vocabs, pool.map(one, vocabs)))
    return {name: path for name, path in saved.items() if path is not None}


def build_vocab(counter: KeyCounter, min_count: int) -> FeatureVocab:
    """Ids 1.. to keys with count >= min_count by descending count, then ascending
    key (= ascending raw value bytes); id 0 is rare/unseen."""
    counter.consolidate()
    kept = counter.counts >= min_count
    keys, counts = counter.keys[kept], counter.counts[kept]
    order = np.lexsort((keys, -counts))
    ids = np.empty(len(keys), np.int64)
    ids[order] = np.arange(1, len(keys) + 1, dtype=np.int64)
    return FeatureVocab(size=len(keys) + 1, sorted_keys=keys, ids=ids)


def count_histogram(counts: np.ndarray) -> Dict[str, Any]:
    """Distinct values and rows per power-of-two count bucket: bucket k holds counts
    in [2**k, 2**(k+1))."""
    counts = counts[counts > 0]
    if not len(counts):
        return {"values_per_bucket": [], "rows_per_bucket": []}
    bucket = np.floor(np.log2(counts)).astype(np.int64)
    # exact for large counts too (float log2 can round up at 2**k - 1)
    bucket -= (np.left_shift(1, bucket) > counts).astype(np.int64)
    n = int(bucket.max()) + 1
    return {
        "values_per_bucket": np.bincount(bucket, minlength=n).astype(np.int64).tolist(),
        "rows_per_bucket": np.bincount(bucket, weights=counts, minlength=n).astype(np.int64).tolist(),
    }


def _finish_one(counter: KeyCounter, cfg: PrepConfig) -> Tuple[FeatureVocab, Dict[str, Any], Optional[str]]:
    """One feature's vocabulary, count histogram and, if its table is over --hash-size, why it is hashed."""
    vocab = build_vocab(counter, cfg.min_count)
    hist = count_histogram(counter.counts)
    hist["distinct_train_values"] = int(len(counter.keys))
    hist["rare_train_values"] = int(len(counter.keys) - (vocab.size - 1))
    if cfg.hash_size is not None and vocab.size > cfg.hash_size:
        return FeatureVocab(size=cfg.hash_size, hashed=True), hist, f"table of {vocab.size} ids exceeds hash_size"
    return vocab, hist, None


def vocab_threads(cfg: PrepConfig) -> int:
    """Threads for the per-feature vocabulary work: it runs between the passes, when the parsing
    threads (or worker processes) are idle, and numpy's sorts and parquet writes release the GIL."""
    return max(1, min(max(cfg.threads, cfg.workers), os.cpu_count() or 1))


def finish_vocabs(
    sparse: Sequence[str], counters: Dict[str, Optional[KeyCounter]], hashed: Dict[str, str], cfg: PrepConfig
) -> Tuple[Dict[str, FeatureVocab], Dict[str, Dict[str, Any]]]:
    """Vocabularies and count histograms from the final train counts (frees the counts). Features
    are finished on vocab_threads(cfg) threads; results are taken in feature order."""
    fallback = cfg.hash_size or DEFAULT_FALLBACK_HASH_SIZE
    live = {name: counter for name in sparse if (counter := counters[name]) is not None}
    with ThreadPoolExecutor(vocab_threads(cfg)) as pool:
        done = dict(zip(live, pool.map(lambda counter: _finish_one(counter, cfg), live.values())))
    vocabs: Dict[str, FeatureVocab] = {}
    histograms: Dict[str, Dict[str, Any]] = {}
    for name in sparse:
        if name not in done:
            vocabs[name] = FeatureVocab(size=fallback, hashed=True)
            histograms[name] = {"distinct_train_values": None}
            continue
        vocabs[name], histograms[name], why = done[name]
        if why is not None:
            hashed[name] = why
        counters[name] = None  # free the counts before pass 2
    return vocabs, histograms


def save_vocabularies(
    out: Path, spec: DatasetSpec, vocabs: Dict[str, FeatureVocab], threads: int = 1
) -> Dict[str, Dict[str, Any]]:
    """Each exact feature's vocabulary as OUT/vocab/<feature>.parquet (data_prep/vocabulary.py), so
    later data can be encoded with it; hashed features need only their kind and table size."""
    kinds = {c.name: c.kind for c in spec.columns}
    exact = [name for name, vocab in vocabs.items() if not vocab.hashed]
    if exact:
        (out / VOCAB_DIR).mkdir(exist_ok=True)

    def write(name: str) -> Dict[str, Any]:
        rel = write_feature_vocab(out, name, kinds[name], vocabs[name].sorted_keys, vocabs[name].ids)
        return {
            "file": rel,
            "values": int(len(vocabs[name].sorted_keys)),
            "sha256": entry_sha256(name, kinds[name], False, vocabs[name].size, out / rel),
        }

    with ThreadPoolExecutor(threads) as pool:
        files = dict(zip(exact, pool.map(write, exact)))
    entries: Dict[str, Dict[str, Any]] = {}
    for name, vocab in vocabs.items():
        if vocab.hashed:
            entries[name] = {
                "kind": kinds[name],
                "hashed": True,
                "sha256": entry_sha256(name, kinds[name], True, vocab.size, None),
            }
        else:
            entries[name] = {"kind": kinds[name], "hashed": False, **files[name]}
    return entries


def enforce_cap(counters: Dict[str, Optional[KeyCounter]], hashed: Dict[str, str], cap: int) -> None:
    """Switch the largest features to hashing while the counts exceed the cap."""
    if sum(c.nbytes for c in counters.values() if c is not None) <= cap:
        return
    for c in counters.values():
        if c is not None:
            c.consolidate()
    while True:
        live = {n: c for n, c in counters.items() if c is not None}
        if not live or sum(c.nbytes for c in live.values()) <= cap:
            return
        name = max(live, key=lambda n: (live[n].nbytes, n))
        hashed[name] = f"value counts exceeded count_memory_mb ({len(live[name].keys)} distinct values so far)"
        counters[name] = None
