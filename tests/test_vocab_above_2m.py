"""Vocabularies above 2M values (issue 26): Criteo Kaggle's largest features hold 2.2M-10.1M distinct
values, and exact vocabularies of more than 2**21 values used to leave the hash-table path for a
binary search per key (24x slower at 3M values). These tests compare the vocabulary path against a
plain numpy reference: ids contiguous from 1, counts exact, min_count honoured, every key encoded to
its reference id (0: rare or unseen)."""

import json
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.vocab_build import FeatureVocab, KeyCounter, KeyTable, build_vocab, save_tables

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_vocab import scrambled, train_rows, write_tsv  # noqa: E402

ABOVE_2M = 2_400_000  # distinct keys, 2.16M of them kept: past the 2**21 values the table path once stopped at


def reference_vocab(keys: np.ndarray, min_count: int) -> Dict[str, np.ndarray]:
    """The vocabulary as the format defines it, by numpy alone: keys seen at least min_count times
    get ids 1.. by descending count, then ascending key."""
    unique, counts = np.unique(keys, return_counts=True)
    kept = counts >= min_count
    kept_counts, kept_keys = counts[kept].tolist(), unique[kept].tolist()
    order = sorted(range(len(kept_keys)), key=lambda i: (-kept_counts[i], kept_keys[i]))
    ids = np.empty(len(order), np.int64)
    ids[np.asarray(order, np.int64)] = np.arange(1, len(order) + 1)
    return {"unique": unique, "counts": counts, "keys": unique[kept], "ids": ids}


def reference_encode(ref: Dict[str, np.ndarray], keys: np.ndarray) -> np.ndarray:
    pos = np.clip(np.searchsorted(ref["keys"], keys), 0, max(len(ref["keys"]) - 1, 0))
    return np.where(ref["keys"][pos] == keys, ref["ids"][pos], 0) if len(ref["keys"]) else np.zeros(len(keys), int)


def test_counts_and_ids_above_2m_values_match_numpy(tmp_path: Path) -> None:
    """2.4M distinct keys counted block by block in shuffled order (the pass-1 merge), some seen
    once, most 2-4 times: exact counts, min_count 2 honoured, ids contiguous in the reference order,
    and encoding through the lookup table (built here and saved/memory-mapped as workers use it)
    gives the reference ids for every key, rare and unseen ones 0."""
    rng = np.random.default_rng(26)
    distinct = scrambled(np.arange(ABOVE_2M)).astype(np.int64)
    keys = np.repeat(distinct, rng.choice([1, 2, 3, 4], ABOVE_2M, p=[0.1, 0.6, 0.2, 0.1]))
    rng.shuffle(keys)
    counter = KeyCounter()
    for block in np.array_split(keys, 40):
        counter.add(block)
    ref = reference_vocab(keys, min_count=2)
    vocab = build_vocab(counter, min_count=2)
    assert np.array_equal(counter.keys, ref["unique"]) and np.array_equal(counter.counts, ref["counts"])
    assert len(ref["keys"]) > (1 << 21)  # kept values above the old table limit too
    assert np.array_equal(vocab.sorted_keys, ref["keys"]) and np.array_equal(vocab.ids, ref["ids"])
    assert vocab.size == len(ref["keys"]) + 1 and np.array_equal(np.sort(vocab.ids), np.arange(1, vocab.size))
    assert vocab.table() is not None, "a vocabulary above 2**21 values must encode through its lookup table"
    probe = np.r_[keys[:300_000], scrambled(np.arange(ABOVE_2M, ABOVE_2M + 1000)).astype(np.int64), -1]
    want = reference_encode(ref, probe)
    assert (want == 0).sum() > 1000 and np.array_equal(vocab.encode(probe), want)
    saved = save_tables({"C1": vocab}, tmp_path / "tables", threads=1)
    mapped = FeatureVocab.from_table(vocab.size, KeyTable.load(Path(saved["C1"])))
    assert np.array_equal(mapped.encode(probe), want)


@pytest.mark.parametrize("workers", [1, 2])
def test_prepared_vocabulary_and_ids_match_numpy(tmp_path: Path, workers: int) -> None:
    """End to end (mlet-prep criteo-kaggle, min_count 2): C1's saved vocabulary and every encoded
    train/val/test id equal the numpy reference built from the train rows' raw values."""
    from data_prep import prepare_criteo_kaggle

    rows = 120_000
    rng = np.random.default_rng(workers)
    c1 = rng.integers(0, 60_000, rows)  # ~2 rows per value: many rare, some counted 3-8 times
    write_tsv(tmp_path / "train.txt", c1)
    out = tmp_path / "out"
    result = prepare_criteo_kaggle(tmp_path / "train.txt", out, min_count=2, workers=workers, block_bytes=1 << 20)
    train = train_rows(rows)
    keys = scrambled(c1).astype(np.int64)
    ref = reference_vocab(keys[:train], min_count=2)
    saved = pq.read_table(out / "vocab" / "C1.parquet", columns=["key", "id"])
    assert np.array_equal(saved.column("key").to_numpy(), ref["keys"])
    assert np.array_equal(saved.column("id").to_numpy(), ref["ids"])
    assert result.meta["table_sizes"]["C1"] == len(ref["keys"]) + 1
    assert json.loads((out / "meta.json").read_text())["min_count"] == 2
    encoded = np.concatenate(
        [
            pq.read_table(out / f, columns=["C1"]).column("C1").to_numpy()
            for split in ("train", "test", "val")  # input order: the last chunk is test first
            for f in result.meta["splits"][split]["files"]
        ]
    )
    assert np.array_equal(encoded, reference_encode(ref, keys))
