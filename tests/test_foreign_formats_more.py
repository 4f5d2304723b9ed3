"""Converters from MLPerf's multi-hot Criteo (`from-mlperf-multihot`) and the reference DLRM's
processed .npz / .bin (`from-dlrm-npz`, `from-dlrm-bin`). The tests write tiny files in each
upstream layout themselves (layouts as read in facebookresearch/dlrm, cited in the modules)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
from data_prep.dataset_format import read_meta
from mlet_dist.data.dataset_check import check_dataset
from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream

BAGS = [3, 2, 1, 2, 6, 1] + [1] * 14 + [4, 1, 1, 1, 1, 1]  # bag size per feature (MLPerf's are 1..100)


def _all_rows(ds: Path, order: Tuple[str, ...] = ("train", "val", "test")) -> pa.Table:
    meta = read_meta(ds)
    return pa.concat_tables([pq.read_table(ds / f) for s in order for f in meta["splits"][s]["files"]])


def _one_line_exit_2(argv: List[str], capsys: pytest.CaptureFixture, message: str, out: Path) -> None:
    assert prep_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()


# --- MLPerf DLRM-DCNv2 multi-hot ----------------------------------------------------------------


def _write_mlperf(root: Path, rows: List[int], seed: int = 0, dense_dir: Path = None) -> List[Dict[str, np.ndarray]]:
    """day_N_sparse_multi_hot.npz (np.savez: members '0'..'25', int32 [rows, bag size]) as
    materialize_synthetic_multihot_dataset.py writes it, with day_N_dense.npy / day_N_labels.npy."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    dense_dir = dense_dir or root
    dense_dir.mkdir(parents=True, exist_ok=True)
    days = []
    for n, r in enumerate(rows):
        bags = {str(j): rng.integers(0, 30 + j, (r, k)).astype(np.int32) for j, k in enumerate(BAGS)}
        dense = np.log(rng.integers(0, 50, (r, 13)) + 2.0).astype(np.float32)
        labels = rng.integers(0, 2, (r, 1)).astype(np.int32)
        np.savez(root / f"day_{n}_sparse_multi_hot.npz", **bags)
        np.save(dense_dir / f"day_{n}_dense.npy", dense)
        np.save(dense_dir / f"day_{n}_labels.npy", labels)
        days.append({"dense": dense, "labels": labels[:, 0], **bags})
    return days


def test_mlperf_multihot_days_convert(tmp_path: Path) -> None:
    days = _write_mlperf(tmp_path / "mh", [120, 90, 41], dense_dir=tmp_path / "npy")
    out = tmp_path / "ds"
    assert prep_main(["from-mlperf-multihot", str(tmp_path / "mh"), str(out), "--dense-labels", str(tmp_path / "npy"),
                      "--row-group-rows", "64"]) == 0
    meta = read_meta(out)
    assert meta["dataset"] == "mlperf-multihot" and meta["rows_read"] == 251 and meta["rows_rejected"] == 0
    assert meta["rows_per_source"] == {"day_0": 120, "day_1": 90, "day_2": 41}
    assert {s: meta["splits"][s]["rows"] for s in ("train", "val", "test")} == {"train": 210, "val": 21, "test": 20}
    assert meta["multi_hot"] == {f"C{j + 1}": k for j, k in enumerate(BAGS) if k > 1}
    assert set(meta["pooling"].values()) == {"sum"} and "not transformed again" in meta["dense_transform"]
    for j in (0, 4, 20, 25):
        want = max(int(d[str(j)].max()) for d in days) + 1
        assert meta["table_sizes"][f"C{j + 1}"] == want
    table = _all_rows(out)
    cat = {k: np.concatenate([d[k] for d in days]) for k in days[0]}
    for row in (0, 119, 120, 209, 210, 230, 231, 250):  # across days and splits
        assert table.column("label")[row].as_py() == cat["labels"][row]
        assert [table.column(f"I{j + 1}")[row].as_py() for j in range(13)] == cat["dense"][row].tolist()
        for j, k in enumerate(BAGS):
            got = table.column(f"C{j + 1}")[row].as_py()
            assert got == (cat[str(j)][row].tolist() if k > 1 else int(cat[str(j)][row, 0])), (row, j)
    check_dataset(DatasetMeta.load(out))
    batch = next(iter(ParquetBatchStream(out, "train", 16))).batch
    kjt = batch.sparse_features
    assert kjt["C5"].lengths().tolist() == [6] * 16 and kjt["C3"].lengths().tolist() == [1] * 16
    assert kjt["C5"].values().tolist() == cat["4"][:16].reshape(-1).tolist()


def test_mlperf_table_sizes_given(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_mlperf(tmp_path / "mh", [30, 30])
    _one_line_exit_2(["from-mlperf-multihot", str(tmp_path / "mh"), str(tmp_path / "ds"), "--table-sizes", "20"],
                     capsys, r"feature C1: id 2\d in the .npz files is outside the given table size 20", tmp_path / "ds")
    assert prep_main(["from-mlperf-multihot", str(tmp_path / "mh"), str(tmp_path / "ok"), "--table-sizes", "100"]) == 0
    assert read_meta(tmp_path / "ok")["table_sizes"]["C26"] == 100


@pytest.mark.parametrize("damage, message", [
    ("negative", r"day_1_sparse_multi_hot.npz: row 5: negative id -3 in C5 \(member '4'\)"),
    ("label", r"day_0_labels.npy: row 8: label 2 is not 0 or 1"),
    ("rows", r"day 1: rows differ: day_1_sparse_multi_hot.npz member '20' 39, day_1_labels.npy 40"),
    ("width", r"day_1_sparse_multi_hot.npz: C2 has bags of 3 ids, day_0_sparse_multi_hot.npz of 2"),
    ("max_bag", r"day_0_sparse_multi_hot.npz: row 0: C5 bag of 6 ids is longer than --max-bag 5"),
    ("member", r"day_0_sparse_multi_hot.npz: members .* where 0..25 were expected"),
    ("dense", r"day_1_dense.npy is missing"),
    ("nan", r"day_0_dense.npy: row 3: non-finite dense value"),
])
def test_bad_mlperf_input_is_one_line_and_publishes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             damage: str, message: str) -> None:
    src = tmp_path / "mh"
    days = _write_mlperf(src, [40, 40])
    bags = lambda d: {str(j): days[d][str(j)] for j in range(26)}  # noqa: E731
    argv = ["from-mlperf-multihot", str(src), str(tmp_path / "ds")]
    if damage == "negative":
        b = bags(1)
        b["4"] = b["4"].copy()
        b["4"][5, 2] = -3
        np.savez(src / "day_1_sparse_multi_hot.npz", **b)
    elif damage == "label":
        labels = days[0]["labels"].copy()
        labels[8] = 2
        np.save(src / "day_0_labels.npy", labels)
    elif damage == "rows":
        b = bags(1)
        b["20"] = b["20"][:39]
        np.savez(src / "day_1_sparse_multi_hot.npz", **b)
    elif damage == "width":
        b = bags(1)
        b["1"] = np.concatenate([b["1"], b["1"][:, :1]], axis=1)
        np.savez(src / "day_1_sparse_multi_hot.npz", **b)
    elif damage == "max_bag":
        argv += ["--max-bag", "5"]
    elif damage == "member":
        b = bags(0)
        del b["25"]
        np.savez(src / "day_0_sparse_multi_hot.npz", **b)
    elif damage == "dense":
        (src / "day_1_dense.npy").unlink()
    else:
        dense = days[0]["dense"].copy()
        dense[3, 7] = np.nan
        np.save(src / "day_0_dense.npy", dense)
    _one_line_exit_2(argv, capsys, message, tmp_path / "ds")
