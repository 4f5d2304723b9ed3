"""train.py end to end on multi-hot data (2 gloo ranks): the collapse is exercised on real pooling
(bags of several ids, empty bags, mean and sum tables), the serving model keeps the dataset's
pooling, int8 serving scores it; and a version-1 (single-hot) dataset still trains."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from data_prep.generate.synthetic import generate_dataset
from dist_launch import torchrun
from training_runs import TRAIN, data_and_run_dir, quick_args, train_one_process

QUICK = [*quick_args(bottom_mlp="16,8", top_mlp="16,1", max_train_batches=6, max_eval_batches=3), "-k", "32", "-d", "8"]


def test_two_ranks_train_and_collapse_on_multi_hot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(
        data, 2000, [40] * 26, seed=5, multi_hot=4, pooling={"C1": "mean", "C9": "mean"}, row_group_rows=256
    )
    run = tmp_path / "run"
    torchrun(TRAIN, data_and_run_dir(data, run, "--sharding", "table_wise", *QUICK))
    s = json.loads((run / "summary.json").read_text())
    assert s["world_size"] == 2 and s["model"] == "mlet"
    diff = s["collapsed_max_abs_prediction_diff"]
    # pooled(T)W vs pooled(TW) over bags of several ids: rounding differs, but only by rounding
    assert 0 < diff < 1e-5, diff
    tables = json.loads((run / "serving" / "manifest.json").read_text())["model"]["tables"]
    pools = {t["feature_names"][0]: t["pooling"] for t in tables}
    assert pools["C1"] == pools["C9"] == "MEAN" and pools["C2"] == "SUM"

    from mlet_dist.serving.predict_cli import main as predict

    out = tmp_path / "preds.parquet"
    predict(
        [
            "--serving",
            str(run / "serving"),
            "--data",
            str(data),
            "--out",
            str(out),
            "--precision",
            "int8",
            "--no-progress",
        ]
    )
    test_rows = json.loads((data / "meta.json").read_text())["splits"]["test"]["rows"]
    probs = pq.read_table(out).column("prob").to_numpy()
    assert len(probs) == test_rows and ((probs > 0) & (probs < 1)).all()


def test_version_1_dataset_still_trains(tmp_path: Path) -> None:
    data = tmp_path / "v1"
    generate_dataset(data, 1200, [40] * 26, seed=6)
    meta = json.loads((data / "meta.json").read_text())
    for key in ("pooling", "multi_hot"):
        del meta[key]
    (data / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    proc = train_one_process(data_and_run_dir(data, tmp_path / "r", *QUICK), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["collapsed_max_abs_prediction_diff"] <= 1e-5
