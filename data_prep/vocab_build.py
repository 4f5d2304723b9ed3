"""Train-split value counts -> per-feature vocabularies (or hashing), in bounded memory.

Counting is exact (`KeyCounter`: sorted unique int64 keys and their counts) until the counts pass
`count_memory_mb`; then the feature with the most distinct values is switched to hashing
(`enforce_cap`). `finish_vocabs` turns the final counts into ids (1.. by descending count, then
ascending raw value; 0 = rare/unseen) and `save_vocabularies` writes them as OUT/vocab/ so later
data can be encoded with the same ids (vocabulary.py, --vocab-from).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_prep import textio
from data_prep.spec import DatasetSpec, PrepConfig
from data_prep.vocabulary import write_feature_vocab

# Buckets used when the memory cap forces hashing and no --hash-size was given
# (the reference DLRM's usual --max-ind-range for Criteo Terabyte).
DEFAULT_FALLBACK_HASH_SIZE = 40_000_000

def unique_counts(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct keys, ascending, and their counts. (Arrow's hash-based value_counts is ~1.6x faster
    here, but its unsorted output made KeyCounter's merge sort ~3x slower: a net loss.)"""
    return np.unique(keys, return_counts=True)


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
        self._keys = np.full(1 << bits, _EMPTY, np.int64)
        self._values = np.zeros(1 << bits, np.int64)
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
        out = np.zeros(len(keys), np.int64)
        aside = keys == _EMPTY
        out[aside] = self._empty_value
        todo = np.flatnonzero(~aside)
        k = keys[todo]
        slot = self._slot(k)
        while len(todo):
            found = self._keys[slot]
            hit = found == k
            out[todo[hit]] = self._values[slot[hit]]
            go = ~hit & (found != _EMPTY)
            todo, k, slot = todo[go], k[go], (slot[go] + 1) & self._mask
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

    def add_unique(self, u: np.ndarray, c: np.ndarray, sign: int = 1) -> None:
        """Add counts `c` of distinct keys `u` (as from unique_counts)."""
        if not len(u):
            return
        self._pending.append((u, c.astype(np.int64) * sign))
        self._pending_len += len(u)
        if self._pending_len > max(len(self.keys), 1 << 18):
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


# Exact vocabularies up to this many values are encoded through a KeyTable (about 4x faster than a
# binary search per key); its memory is 32-64 bytes per value, so at most 64 MB per feature.
TABLE_MAX_VALUES = 1 << 21
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
        if not len(self.sorted_keys):
            return np.zeros(len(keys), np.int64)
        if len(self.sorted_keys) <= TABLE_MAX_VALUES:
            if self._table is None:
                with _TABLE_LOCK:  # pass 2's scan threads encode blocks of the same feature at once
                    if self._table is None:
                        self._table = KeyTable(self.sorted_keys, self.ids)
            return self._table.get(keys)
        pos = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self.sorted_keys) - 1)
        return np.where(self.sorted_keys[pos] == keys, self.ids[pos], 0)


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


def finish_vocabs(
    sparse: Sequence[str], counters: Dict[str, Optional[KeyCounter]], hashed: Dict[str, str], cfg: PrepConfig
) -> Tuple[Dict[str, FeatureVocab], Dict[str, Dict[str, Any]]]:
    """Vocabularies and count histograms from the final train counts (frees the counts)."""
    vocabs: Dict[str, FeatureVocab] = {}
    histograms: Dict[str, Dict[str, Any]] = {}
    fallback = cfg.hash_size or DEFAULT_FALLBACK_HASH_SIZE
    for name in sparse:
        counter = counters[name]
        if counter is None:
            vocabs[name] = FeatureVocab(size=fallback, hashed=True)
            histograms[name] = {"distinct_train_values": None}
            continue
        vocab = build_vocab(counter, cfg.min_count)
        hist = count_histogram(counter.counts)
        hist["distinct_train_values"] = int(len(counter.keys))
        hist["rare_train_values"] = int(len(counter.keys) - (vocab.size - 1))
        if cfg.hash_size is not None and vocab.size > cfg.hash_size:
            hashed[name] = f"table of {vocab.size} ids exceeds hash_size"
            vocab = FeatureVocab(size=cfg.hash_size, hashed=True)
        vocabs[name] = vocab
        histograms[name] = hist
        counters[name] = None  # free the counts before pass 2
    return vocabs, histograms


def save_vocabularies(out: Path, spec: DatasetSpec, vocabs: Dict[str, FeatureVocab]) -> Dict[str, Dict[str, Any]]:
    """Each exact feature's vocabulary as OUT/vocab/<feature>.parquet (data_prep/vocabulary.py), so
    later data can be encoded with it; hashed features need only their kind and table size."""
    kinds = {c.name: c.kind for c in spec.columns}
    entries: Dict[str, Dict[str, Any]] = {}
    for name, vocab in vocabs.items():
        if vocab.hashed:
            entries[name] = {"kind": kinds[name], "hashed": True}
        else:
            rel = write_feature_vocab(out, name, kinds[name], vocab.sorted_keys, vocab.ids)
            entries[name] = {"kind": kinds[name], "hashed": False, "file": rel, "values": int(len(vocab.sorted_keys))}
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
