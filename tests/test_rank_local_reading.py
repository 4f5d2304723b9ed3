"""Rank-local reading, shuffling and prefetch of ParquetBatchStream (order="local", the default)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_prep import prepare_criteo_kaggle, read_meta
from mlet_dist.data import LoadedBatch, ParquetBatchStream
from mlet_dist.errors import DatasetError

SAMPLE = Path(__file__).resolve().parents[1] / "data_prep" / "samples" / "criteo_sample.tsv"
ROW_GROUP = 300


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "criteo"
    prepare_criteo_kaggle(SAMPLE, out, rows_per_file=1000, row_group_rows=ROW_GROUP)
    return out


def split_table(ds: Path, split: str) -> pa.Table:
    meta = read_meta(ds)
    return pa.concat_tables([pq.read_table(ds / f) for f in meta["splits"][split]["files"]])


def row_keys(lb: LoadedBatch, valid_only: bool = True) -> List[tuple]:
    """One hashable key per row: dense values, label and every id (rows are told apart by them)."""
    n = lb.num_valid if valid_only else lb.batch.labels.shape[0]
    ids = torch.stack([jt.values() for jt in lb.batch.sparse_features.to_dict().values()], dim=1)
    full = torch.cat([lb.batch.dense_features, lb.batch.labels[:, None], ids.double().float()], dim=1)
    return [tuple(r) for r in full[:n].tolist()]


def table_keys(t: pa.Table, meta: dict) -> List[tuple]:
    cols = [*meta["dense_features"], meta["label"], *meta["sparse_features"]]
    arr = np.stack([t.column(c).to_numpy().astype(np.float32) for c in cols], axis=1)
    return [tuple(r) for r in torch.from_numpy(arr).tolist()]


def streams(ds: Path, split: str, world: int, local: int, **kw) -> List[ParquetBatchStream]:
    return [ParquetBatchStream(ds, split, local, rank=r, world_size=world, **kw) for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("shuffle", [False, True])
def test_train_ranks_cover_disjoint_rows_with_equal_batch_counts(dataset: Path, world: int, shuffle: bool) -> None:
    meta = read_meta(dataset)
    local = 64
    ss = streams(dataset, "train", world, local, shuffle=shuffle, seed=3, shuffle_window=500)
    per_rank = [list(s.iter_from(0, epoch=1)) for s in ss]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(ss[0]) > 0
    seen = Counter(k for b in per_rank for lb in b for k in row_keys(lb))
    table = split_table(dataset, "train")
    assert sum(seen.values()) == len(ss[0]) * local * world  # the remainder (< W*B rows) is dropped
    assert not seen - Counter(table_keys(table, meta))  # every row is a real row, none twice
    if not shuffle:  # file order: rank r owns the r-th contiguous block
        used = table.slice(0, len(ss[0]) * local * world)
        assert Counter(table_keys(used, meta)) == seen


def test_each_rank_decodes_only_its_share(dataset: Path) -> None:
    world, local = 4, 64
    for s in streams(dataset, "train", world, local, shuffle=True, seed=1, shuffle_window=256):
        list(s.iter_from(0, epoch=0))
        own = len(s) * local
        assert own <= s.decoded_rows <= own + 2 * ROW_GROUP, (s.rank, s.decoded_rows, own)


@pytest.mark.parametrize("split", ["val", "test"])
@pytest.mark.parametrize("world,local", [(2, 128), (3, 50), (4, 200)])
def test_eval_gathered_rank_major_is_file_order(dataset: Path, split: str, world: int, local: int) -> None:
    meta = read_meta(dataset)
    ss = streams(dataset, split, world, local, drop_last=False)
    per_rank = [list(s) for s in ss]
    assert len({len(b) for b in per_rank}) == 1 == len({len(s) for s in ss})
    assert all(lb.batch.labels.shape[0] == local for b in per_rank for lb in b)
    keys = [k for b in per_rank for lb in b for k in row_keys(lb)]  # rank-major
    assert keys == table_keys(split_table(dataset, split), meta)
    assert all(ss[0].rank_major for _ in ss)


def test_shuffle_is_seeded_and_changes_with_epoch(dataset: Path) -> None:
    def order(seed: int, epoch: int) -> List[tuple]:
        s = ParquetBatchStream(dataset, "train", 64, shuffle=True, seed=seed, shuffle_window=500)
        return [k for lb in s.iter_from(0, epoch) for k in row_keys(lb)]

    a = order(0, 0)
    assert a == order(0, 0)
    assert a != order(0, 1) and a != order(1, 0)
    plain = [k for lb in ParquetBatchStream(dataset, "train", 64) for k in row_keys(lb)]
    everything = Counter(table_keys(split_table(dataset, "train"), read_meta(dataset)))
    assert len(a) == len(plain) and not Counter(a) - everything and a != plain  # its tail drop differs


@pytest.mark.parametrize("order", ["local", "exact"])
def test_resume_mid_epoch_lands_on_the_next_batch(dataset: Path, order: str) -> None:
    for rank in range(2):
        s = ParquetBatchStream(
            dataset, "train", 64, rank=rank, world_size=2, order=order, shuffle=True, seed=7, shuffle_window=300
        )
        whole = [row_keys(lb) for lb in s.iter_from(0, epoch=2)]
        for start in (1, 5, len(whole) - 1):
            assert [row_keys(lb) for lb in s.iter_from(start, epoch=2)] == whole[start:]


def test_corrupt_part_file_names_file_and_row_group(dataset: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(dataset, tmp_path / "data"))
    part = copy / "train" / "part-00002.parquet"
    data = bytearray(part.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    data[100 : footer_start - 100] = bytes(len(data[100 : footer_start - 100]))  # zero the data pages
    part.write_bytes(bytes(data))
    s = ParquetBatchStream(copy, "train", 64, rank=0, world_size=2, prefetch=2)  # rows 0..3839: its file
    with pytest.raises(DatasetError, match=r"part-00002\.parquet \(row group \d+\)"):
        list(s)


def test_prefetch_stops_with_the_consumer(dataset: Path) -> None:
    import threading

    s = ParquetBatchStream(dataset, "train", 16, prefetch=2)
    it = s.iter_from(0)
    next(it)
    it.close()  # early stopping / max batches: the producer thread must end
    assert not [t for t in threading.enumerate() if t.name == "mlet-prefetch" and t.is_alive()]
