"""A dataset converted from MLPerf's multi-hot Criteo layout trains end to end (2 gloo ranks):
bags of a fixed size per feature, some features single-hot, as the MLPerf DLRM-DCNv2 data has."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_prep.dataset_format import read_meta
from data_prep.convert.mlperf_multihot import prepare_mlperf_multihot
from dist_launch import torchrun
from training_runs import TRAIN, data_and_run_dir, quick_args

BAGS = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 20, 27, 10, 3, 1, 1]  # MLPerf's, C21 capped


def test_converted_mlperf_multihot_trains(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    src = tmp_path / "mlperf"
    src.mkdir()
    for n, rows in enumerate([900, 900, 500]):
        bags = {str(j): rng.integers(0, 40, (rows, k)).astype(np.int32) for j, k in enumerate(BAGS)}
        np.savez(src / f"day_{n}_sparse_multi_hot.npz", **bags)
        np.save(src / f"day_{n}_dense.npy", np.log(rng.integers(0, 50, (rows, 13)) + 2.0).astype(np.float32))
        np.save(src / f"day_{n}_labels.npy", rng.integers(0, 2, (rows, 1)).astype(np.int32))
    data = tmp_path / "data"
    prepare_mlperf_multihot(src, data, table_sizes=[40] * 26, row_group_rows=256)
    assert read_meta(data)["multi_hot"]["C22"] == 27
    run = tmp_path / "run"
    quick = quick_args(bottom_mlp="16,8", top_mlp="16,1", max_train_batches=6, max_eval_batches=3)
    torchrun(TRAIN, data_and_run_dir(data, run, "--sharding", "table_wise", *quick, "-k", "32", "-d", "8"))
    s = json.loads((run / "summary.json").read_text())
    assert s["world_size"] == 2 and s["model"] == "mlet"
    assert 0 < s["collapsed_max_abs_prediction_diff"] < 1e-5  # pooled bags: rounding only
    assert s["steps"] == 6  # trained on the converted bags; evaluated on the halves of the last day:
    # --max-eval-batches 3 x --batch-size 64: the first 192 of each half's 250 rows, at any world size.
    assert s["trained"]["val"]["rows"] == s["trained"]["test"]["rows"] == 192
