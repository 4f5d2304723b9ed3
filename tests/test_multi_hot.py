"""Multi-hot datasets (FORMAT.md version 2): list<int64> bags, empty bags, per-feature pooling,
version-1 datasets still read, and bad bags stopped with one line naming file, row group and row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from torchrec.modules.embedding_configs import PoolingType

from data_prep.dataset_format import read_meta
from data_prep.generate.synthetic import generate_dataset
from mlet_dist.data.dataset_check import check_dataset
from mlet_dist.data.epoch_plan import rank_pieces
from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream
from mlet_dist.errors import DatasetError
from mlet_dist.models.embedding_tables import EmbeddingSpec, build_embedding_collection
from mlet_dist.serving.scoring import ScoringStream

MAX_BAG = 3
POOLING = {"C1": "mean", "C2": "mean"}


@pytest.fixture(scope="module")
def multi_hot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mh") / "data"
    generate_dataset(out, 1400, [30] * 26, seed=3, multi_hot=MAX_BAG, pooling=POOLING, row_group_rows=128)
    return out


@pytest.fixture(scope="module")
def single_hot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sh") / "data"
    generate_dataset(out, 700, [30] * 26, seed=4, row_group_rows=128)
    return out


def _copy(src: Path, dst: Path, **meta_changes: object) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def _rows(ds: Path, split: str) -> pa.Table:
    meta = read_meta(ds)
    return pa.concat_tables([pq.read_table(ds / f) for f in meta["splits"][split]["files"]])


def test_meta_records_pooling_and_bag_sizes(multi_hot: Path) -> None:
    meta = read_meta(multi_hot)
    assert meta["format_version"] == 2
    assert meta["multi_hot"] == {f"C{i}": MAX_BAG for i in range(1, 27)}
    assert meta["pooling"]["C1"] == "mean" and meta["pooling"]["C3"] == "sum"
    col = _rows(multi_hot, "train").column("C1")
    lengths = pc.list_value_length(col).to_numpy()
    assert lengths.min() == 0 and lengths.max() == MAX_BAG  # empty bags and full bags both occur


def test_kjt_has_the_real_bags(multi_hot: Path) -> None:
    """Each rank's KJT holds exactly the parquet bags of its rows, empty ones as length 0."""
    table = _rows(multi_hot, "train")
    for rank in range(2):
        stream = ParquetBatchStream(multi_hot, "train", 64, rank=rank, world_size=2)
        lo = rank_pieces(stream.fresh_plan(), stream.layout, rank)[0].seg_lo  # its contiguous share
        for b, lb in enumerate(stream):
            part = table.slice(lo + b * 64, 64)
            kjt = lb.batch.sparse_features
            for name in ("C1", "C7", "C26"):
                col = part.column(name)
                assert kjt[name].lengths().tolist() == pc.list_value_length(col).to_pylist()
                assert kjt[name].values().tolist() == pc.list_flatten(col).to_pylist()
            if b == 2:
                break


def test_shuffled_and_padded_batches_keep_bags_whole(multi_hot: Path) -> None:
    stream = ParquetBatchStream(multi_hot, "val", 64, drop_last=False, shuffle=True, seed=1)
    total_ids = 0
    for lb in stream:
        kjt = lb.batch.sparse_features
        assert kjt.lengths().numel() == 26 * 64 and int(kjt.lengths().sum()) == kjt.values().numel()
        total_ids += int(kjt["C1"].lengths()[: lb.num_valid].sum())
    assert total_ids == int(pc.sum(pc.list_value_length(_rows(multi_hot, "val").column("C1"))).as_py())


def test_version_1_dataset_still_reads(single_hot: Path, tmp_path: Path) -> None:
    v1 = _copy(single_hot, tmp_path / "v1", format_version=1, pooling=None, multi_hot=None)
    meta = DatasetMeta.load(v1)
    assert meta.multi_hot == {} and set(meta.pooling.values()) == {"sum"}
    check_dataset(meta)
    kjt = next(iter(ParquetBatchStream(v1, "train", 32))).batch.sparse_features
    assert kjt.lengths().tolist() == [1] * (26 * 32)
    assert kjt["C4"].values().tolist() == _rows(v1, "train").column("C4").to_pylist()[:32]


def test_meta_validation(single_hot: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="format_version 3"):
        DatasetMeta.load(_copy(single_hot, tmp_path / "v3", format_version=3))
    with pytest.raises(DatasetError, match=r"pooling\['C1'\] = 'avg'"):
        DatasetMeta.load(_copy(single_hot, tmp_path / "avg", pooling={"C1": "avg"}))
    with pytest.raises(DatasetError, match="multi_hot needs format_version 2"):
        DatasetMeta.load(_copy(single_hot, tmp_path / "v1mh", format_version=1, multi_hot={"C1": 2}))


def test_footer_check_passes_with_empty_bags(multi_hot: Path) -> None:
    """The leaf null count of a list column counts empty bags: not an error."""
    assert check_dataset(DatasetMeta.load(multi_hot))["train"] == 1200


def test_footer_check_finds_an_id_outside_its_table(multi_hot: Path, tmp_path: Path) -> None:
    sizes = dict(read_meta(multi_hot)["table_sizes"], C5=2)
    bad = _copy(multi_hot, tmp_path / "small", table_sizes=sizes)
    with pytest.raises(DatasetError, match=r"feature 'C5' has ids in \[0, \d+\], outside its table \[0, 2\)"):
        check_dataset(DatasetMeta.load(bad))


def test_bag_longer_than_stated_maximum(multi_hot: Path, tmp_path: Path) -> None:
    bad = _copy(multi_hot, tmp_path / "short", multi_hot={f"C{i}": (2 if i == 3 else MAX_BAG) for i in range(1, 27)})
    with pytest.raises(
        DatasetError,
        match=r"part-00000.parquet \(row group 0\): feature 'C3' has a bag of 3 ids "
        r"at row \d+ of the row group, longer than its stated maximum 2",
    ):
        next(iter(ParquetBatchStream(bad, "train", 64)))


def test_bad_id_inside_a_bag_names_its_row(multi_hot: Path, tmp_path: Path) -> None:
    bad = _copy(multi_hot, tmp_path / "badid")
    path = bad / "train" / "part-00000.parquet"
    table = pq.read_table(path)
    col = table.column("C2").combine_chunks()
    lengths = pc.list_value_length(col).to_numpy()
    row = int(np.flatnonzero(lengths >= 2)[5])
    values = pc.list_flatten(col).to_numpy().copy()
    values[int(col.offsets[row].as_py()) + 1] = 999
    fixed = pa.ListArray.from_arrays(col.offsets, pa.array(values))
    table = table.set_column(table.schema.get_field_index("C2"), "C2", fixed)
    pq.write_table(table, path, row_group_size=128)
    with pytest.raises(
        DatasetError,
        match=rf"feature 'C2': id 999 out of range \[0, 30\) in .* \(row group "
        rf"{row // 128}\), row {row % 128} of the row group",
    ):
        list(ParquetBatchStream(bad, "train", 64))


def test_list_column_must_be_declared(multi_hot: Path, tmp_path: Path) -> None:
    bad = _copy(multi_hot, tmp_path / "undeclared", multi_hot={f"C{i}": MAX_BAG for i in range(2, 27)})
    with pytest.raises(DatasetError, match="'C1' has a list<element: int64> column but meta.json does not list it"):
        check_dataset(DatasetMeta.load(bad))


def test_model_builder_uses_the_dataset_pooling(multi_hot: Path) -> None:
    meta = DatasetMeta.load(multi_hot)
    for mlet in (True, False):
        ebc = build_embedding_collection(meta.table_sizes, EmbeddingSpec(8, 16, mlet=mlet), pooling=meta.pooling)
        pools = {c.feature_names[0]: c.pooling for c in ebc.embedding_bag_configs()}
        assert pools["C1"] == PoolingType.MEAN and pools["C2"] == PoolingType.MEAN and pools["C3"] == PoolingType.SUM
    with pytest.raises(ValueError, match="pooling of feature 'C1' must be sum or mean"):
        build_embedding_collection(meta.table_sizes, EmbeddingSpec(8, 16), pooling={"C1": "max"})


def test_mean_pooling_of_bags_and_empty_bags(multi_hot: Path) -> None:
    """The baseline EBC on a real batch: mean = sum / bag size, an empty bag pools to zeros."""
    meta = DatasetMeta.load(multi_hot)
    kjt = next(iter(ParquetBatchStream(multi_hot, "train", 64))).batch.sparse_features
    torch.manual_seed(0)
    ebc = build_embedding_collection(meta.table_sizes, EmbeddingSpec(4, mlet=False), pooling=meta.pooling)
    out = ebc(kjt)
    weight = ebc.embedding_bags["t_C1"].weight
    lengths, ids = kjt["C1"].lengths().tolist(), kjt["C1"].values()
    start = 0
    for row, n in enumerate(lengths):
        expected = weight[ids[start : start + n]].mean(0) if n else torch.zeros(4)
        assert torch.allclose(out["C1"][row], expected, atol=1e-6)
        start += n
    assert 0 in lengths


def test_serving_reader_builds_the_training_kjt(multi_hot: Path) -> None:
    meta = DatasetMeta.load(multi_hot)
    scoring = next(iter(ScoringStream(multi_hot, "train", 64, dict(meta.table_sizes))))
    training = next(iter(ParquetBatchStream(multi_hot, "train", 64))).batch.sparse_features
    for name in ("C1", "C13"):
        assert torch.equal(scoring.sparse[name].lengths(), training[name].lengths())
        assert torch.equal(scoring.sparse[name].values(), training[name].values())
    small = dict(meta.table_sizes, C4=1)
    with pytest.raises(ValueError, match="'C4': id .* out of range .* training vocabulary"):
        list(ScoringStream(multi_hot, "train", 64, small))
