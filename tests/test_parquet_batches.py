"""Tests for mlet_dist.data.ParquetBatchStream (rank slicing, padding, id validation)."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_prep import prepare_criteo_kaggle, read_meta
from mlet_dist.data import LoadedBatch, ParquetBatchStream

SAMPLE = Path(__file__).resolve().parents[1] / "data_prep" / "samples" / "criteo_sample.tsv"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Sample prepared with small part files and row groups so batches straddle files."""
    out = tmp_path_factory.mktemp("ds") / "criteo"
    prepare_criteo_kaggle(SAMPLE, out, rows_per_file=1000, row_group_rows=300)
    return out


# The tests below pin today's exact order ("N ranks x B = one process x N*B"); the rank-local
# default has its own tests in test_rank_local_reading.py.
ExactStream = functools.partial(ParquetBatchStream, order="exact")


def split_rows(ds: Path, split: str) -> pa.Table:
    meta = read_meta(ds)
    return pa.concat_tables([pq.read_table(ds / f) for f in meta["splits"][split]["files"]])


def kjt_columns(lb: LoadedBatch) -> dict:
    return {k: jt.values() for k, jt in lb.batch.sparse_features.to_dict().items()}


def cat_ranks(per_rank: List[LoadedBatch]) -> dict:
    """Concatenate one step's local batches of all ranks into one batch-like dict."""
    out = {
        "dense": torch.cat([lb.batch.dense_features for lb in per_rank]),
        "labels": torch.cat([lb.batch.labels for lb in per_rank]),
    }
    for key in per_rank[0].batch.sparse_features.keys():
        out[key] = torch.cat([kjt_columns(lb)[key] for lb in per_rank])
    return out


def test_batch_structure(dataset: Path) -> None:
    s = ExactStream(dataset, "train", 16)
    lb = next(iter(s))
    b = lb.batch
    assert lb.num_valid == 16
    assert b.dense_features.dtype == torch.float32 and b.dense_features.shape == (16, 13)
    assert b.labels.dtype == torch.float32 and b.labels.shape == (16,)
    kjt = b.sparse_features
    assert kjt.keys() == [f"C{i}" for i in range(1, 27)] == s.feature_names
    assert kjt.values().dtype == torch.int64 and kjt.values().shape == (26 * 16,)
    assert torch.equal(kjt.lengths(), torch.ones(26 * 16, dtype=kjt.lengths().dtype))
    assert s.num_dense == 13 and s.table_sizes == read_meta(dataset)["table_sizes"]
    # Values are feature-major and equal the parquet rows.
    rows = split_rows(dataset, "train").slice(0, 16)
    expected = np.concatenate([rows.column(f).to_numpy() for f in s.feature_names])
    assert np.array_equal(kjt.values().numpy(), expected)
    dense = np.stack([rows.column(f"I{i}").to_numpy() for i in range(1, 14)], axis=1)
    assert np.array_equal(b.dense_features.numpy(), dense)
    assert np.array_equal(b.labels.numpy(), rows.column("label").to_numpy().astype(np.float32))


def test_single_stream_covers_split_in_order(dataset: Path) -> None:
    """Batch boundaries cross part files (1000 rows) and row groups (300 rows)."""
    s = ExactStream(dataset, "train", 384)
    rows = split_rows(dataset, "train")
    assert len(s) == rows.num_rows // 384
    labels = torch.cat([lb.batch.labels for lb in s]).numpy()
    c5 = torch.cat([kjt_columns(lb)["C5"] for lb in s]).numpy()
    n = len(s) * 384
    assert np.array_equal(labels, rows.column("label").to_numpy()[:n].astype(np.float32))
    assert np.array_equal(c5, rows.column("C5").to_numpy()[:n])


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_equal_single_process_with_bigger_batch(dataset: Path, world_size: int) -> None:
    local = 100
    single = ExactStream(dataset, "train", local * world_size)
    ranks = [ExactStream(dataset, "train", local, rank=r, world_size=world_size) for r in range(world_size)]
    assert len({len(single), *(len(s) for s in ranks)}) == 1 and len(single) > 0
    steps = 0
    for big, *parts in zip(single, *ranks):
        merged = cat_ranks(parts)
        assert torch.equal(merged["dense"], big.batch.dense_features)
        assert torch.equal(merged["labels"], big.batch.labels)
        for key, values in kjt_columns(big).items():
            assert torch.equal(merged[key], values), key
        steps += 1
    assert steps == len(single)


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("world_size,local", [(1, 100), (2, 128), (3, 50), (4, 200)])
def test_drop_last_false_pads_and_counts(dataset: Path, split: str, world_size: int, local: int) -> None:
    rows = split_rows(dataset, split)
    streams = [
        ExactStream(dataset, split, local, rank=r, world_size=world_size, drop_last=False) for r in range(world_size)
    ]
    lens = {len(s) for s in streams}
    assert lens == {-(-rows.num_rows // (local * world_size))}
    batches = [list(s) for s in streams]
    assert {len(b) for b in batches} == lens
    assert sum(lb.num_valid for b in batches for lb in b) == rows.num_rows
    first = torch.from_numpy(np.stack([rows.column(f"I{i}").to_numpy()[0] for i in range(1, 14)]))
    real_labels = []
    for step in range(len(batches[0])):
        for r in range(world_size):
            lb = batches[r][step]
            assert lb.batch.dense_features.shape[0] == local  # always full size
            assert lb.batch.sparse_features.stride() == local
            real_labels.append(lb.batch.labels[: lb.num_valid])
            for row in lb.batch.dense_features[lb.num_valid :]:
                assert torch.equal(row, first)  # padding repeats the split's first row
    expected = rows.column("label").to_numpy().astype(np.float32)
    assert np.array_equal(torch.cat(real_labels).numpy(), expected)


def test_num_valid_zero_for_trailing_ranks(dataset: Path) -> None:
    n = split_rows(dataset, "val").num_rows  # 642
    last = [list(ExactStream(dataset, "val", 200, rank=r, world_size=4, drop_last=False))[-1] for r in range(4)]
    assert [lb.num_valid for lb in last] == [200, 200, 200, n - 600]
    last = [list(ExactStream(dataset, "val", 300, rank=r, world_size=3, drop_last=False))[-1] for r in range(3)]
    assert [lb.num_valid for lb in last] == [300, 300, n - 600] and n - 600 < 300
    tail = list(ExactStream(dataset, "val", 500, rank=1, world_size=2, drop_last=False))
    assert [lb.num_valid for lb in tail] == [n - 500]
    tail = list(ExactStream(dataset, "val", 400, rank=1, world_size=2, drop_last=False))
    assert [lb.num_valid for lb in tail] == [n - 400]
    tail = list(ExactStream(dataset, "val", 700, rank=1, world_size=2, drop_last=False))
    assert [lb.num_valid for lb in tail] == [0]


def test_drop_last_true_len_and_max_batches(dataset: Path) -> None:
    n = split_rows(dataset, "train").num_rows
    for ws in (1, 2, 5):
        streams = [ExactStream(dataset, "train", 64, rank=r, world_size=ws) for r in range(ws)]
        assert {len(s) for s in streams} == {n // (64 * ws)}
        assert all(lb.num_valid == 64 for lb in streams[-1])
    capped = ExactStream(dataset, "train", 64, max_batches=3)
    assert len(capped) == 3 and len(list(capped)) == 3
    assert len(list(capped)) == 3  # re-iterable
    assert len(ExactStream(dataset, "val", 1000)) == 0
    assert list(ExactStream(dataset, "val", 1000)) == []


def test_bad_arguments(dataset: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        ExactStream(dataset, "dev", 8)
    with pytest.raises(ValueError, match="rank"):
        ExactStream(dataset, "train", 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="local_batch_size"):
        ExactStream(dataset, "train", 0)


def _corrupt(dataset: Path, tmp_path: Path, feature: str, row: int, value: int) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    part = bad / read_meta(bad)["splits"]["val"]["files"][0]
    table = pq.read_table(part)
    ids = table.column(feature).to_numpy().copy()
    ids[row] = value
    table = table.set_column(table.schema.get_field_index(feature), table.schema.field(feature), pa.array(ids))
    pq.write_table(table, part)
    return bad


@pytest.mark.parametrize("delta", [0, 7, -1])
def test_out_of_range_id_raises(dataset: Path, tmp_path: Path, delta: int) -> None:
    size = read_meta(dataset)["table_sizes"]["C3"]
    value = -1 if delta < 0 else size + delta
    bad = _corrupt(dataset, tmp_path, "C3", row=5, value=value)
    for rank in (0, 1):  # every rank raises, even the one whose slice lacks the row
        stream = ExactStream(bad, "val", 4, rank=rank, world_size=2)
        with pytest.raises(ValueError, match=rf"'C3'.*id {value} .*part-00000\.parquet"):
            list(stream)


def test_meta_row_count_mismatch_is_caught(dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    part = bad / "val" / "part-00000.parquet"
    pq.write_table(pq.read_table(part).slice(0, 10), part)
    with pytest.raises(ValueError, match="rows"):
        ExactStream(bad, "val", 4)
