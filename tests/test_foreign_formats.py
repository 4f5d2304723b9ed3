"""Converters from formats people already have: TorchRec's Criteo .npy day files
(`mlet-prep torchrec-npy`). The test writes tiny files in the upstream layout itself."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
from data_prep.dataset_format import read_meta
from mlet_dist.data.dataset_check import check_dataset
from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream


def _write_days(root: Path, rows: List[int], seed: int = 0) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """day_N_{dense,sparse,labels}.npy as torchrec's npy_preproc_criteo writes them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    days = []
    for n, r in enumerate(rows):
        dense = np.log(rng.integers(0, 50, (r, 13)) + 2.0).astype(np.float32)  # log(x - min + 2), x >= -1
        sparse = rng.integers(0, 40, (r, 26)).astype(np.int32)
        labels = rng.integers(0, 2, (r, 1)).astype(np.int32)
        np.save(root / f"day_{n}_dense.npy", dense)
        np.save(root / f"day_{n}_sparse.npy", sparse)
        np.save(root / f"day_{n}_labels.npy", labels)
        days.append((dense, sparse, labels[:, 0]))
    return days


def _all_rows(ds: Path) -> pa.Table:
    meta = read_meta(ds)
    return pa.concat_tables([pq.read_table(ds / f) for s in ("train", "val", "test") for f in meta["splits"][s]["files"]])


def test_torchrec_npy_days_convert(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    days = _write_days(tmp_path / "npy", [300, 250, 101])
    out = tmp_path / "ds"
    assert prep_main(["torchrec-npy", str(tmp_path / "npy"), str(out), "--row-group-rows", "128"]) == 0
    meta = read_meta(out)
    assert meta["rows_read"] == 651 and meta["rows_rejected"] == 0
    assert {s: meta["splits"][s]["rows"] for s in ("train", "val", "test")} == {"train": 550, "val": 51, "test": 50}
    assert meta["sources"] == ["day_0", "day_1", "day_2"] and "not transformed again" in meta["dense_transform"]
    sparse = np.concatenate([d[1] for d in days])
    assert meta["table_sizes"]["C5"] == int(sparse[:, 4].max()) + 1
    table = _all_rows(out)
    dense = np.concatenate([d[0] for d in days])
    labels = np.concatenate([d[2] for d in days])
    for row in (0, 299, 300, 549, 550, 600, 650):  # a few decoded rows, across days and splits
        assert table.column("label")[row].as_py() == labels[row]
        assert [table.column(f"I{j + 1}")[row].as_py() for j in range(13)] == dense[row].tolist()  # not re-logged
        assert [table.column(f"C{j + 1}")[row].as_py() for j in range(26)] == sparse[row].tolist()
    check_dataset(DatasetMeta.load(out))
    batch = next(iter(ParquetBatchStream(out, "train", 32))).batch
    assert batch.sparse_features["C1"].values().tolist() == sparse[:32, 0].tolist()


@pytest.mark.parametrize("damage, message", [
    ("label", r"day_1_labels.npy: row 7: label 3 is not 0 or 1"),
    ("id", r"day_0_sparse.npy: row 11: negative id -5 in C3"),
    ("rows", r"day 1: rows differ: day_1_dense.npy 40, day_1_sparse.npy 39"),
    ("missing", r"day_1_sparse.npy is missing"),
])
def test_bad_day_files_are_one_line_and_publish_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         damage: str, message: str) -> None:
    src = tmp_path / "npy"
    days = _write_days(src, [40, 40])
    if damage == "label":
        labels = days[1][2].copy()
        labels[7] = 3
        np.save(src / "day_1_labels.npy", labels)
    elif damage == "id":
        sparse = days[0][1].copy()
        sparse[11, 2] = -5
        np.save(src / "day_0_sparse.npy", sparse)
    elif damage == "rows":
        np.save(src / "day_1_sparse.npy", days[1][1][:39])
    else:
        (src / "day_1_sparse.npy").unlink()
    assert prep_main(["torchrec-npy", str(src), str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "ds").exists()


def test_given_table_sizes_must_hold_the_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_days(tmp_path / "npy", [30, 30])
    assert prep_main(["torchrec-npy", str(tmp_path / "npy"), str(tmp_path / "ds"), "--table-sizes", "5"]) == 2
    assert "outside the given table size 5" in capsys.readouterr().err
    assert prep_main(["torchrec-npy", str(tmp_path / "npy"), str(tmp_path / "ok"), "--table-sizes", "100"]) == 0
    assert json.loads((tmp_path / "ok" / "meta.json").read_text())["table_sizes"]["C26"] == 100
