"""The planted benchmark generator: format, Bayes AUC, determinism, reader, CLI."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from data_prep.cli import main as prep_main
from data_prep.dataset_format import read_meta
from data_prep.metrics import binary_auc, expected_auc
from data_prep.generate.planted import TRUTH_FILE, PlantedSpec, generate_planted
from mlet_dist.data.parquet_batches import ParquetBatchStream

SPEC = PlantedSpec(rows=6000, tables=3, cardinality=(50, 400, 1000), rank=3, zipf=1.2, noise=0.3, seed=7, dense=2)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("planted") / "data"
    generate_planted(out, SPEC, save_truth=True)
    return out


def _split(data: Path, split: str) -> pa.Table:
    meta = read_meta(data)
    return pa.concat_tables([pq.read_table(data / f) for f in meta["splits"][split]["files"]])


def test_meta_has_bayes_auc_and_standard_keys(planted: Path) -> None:
    meta = read_meta(planted)
    assert meta["dataset"] == "planted"
    assert meta["sparse_features"] == ["C1", "C2", "C3"] and meta["dense_features"] == ["I1", "I2"]
    assert meta["table_sizes"] == {"C1": 50, "C2": 400, "C3": 1000}
    assert {s: meta["splits"][s]["rows"] for s in ("train", "val", "test")} == {
        "train": 5143,
        "val": 428,
        "test": 429,
    }  # the last chunk: test first (ceil half)
    for split in ("train", "val", "test"):
        assert 0.6 < meta["bayes_auc"][split] < 1.0
        b = meta["planted"]["bayes"][split]
        assert b["auc"] == meta["bayes_auc"][split] and 0 < b["logloss"] < 0.7 and 0.6 < b["auc_expected"] < 1
        assert abs(meta["planted"]["positive_rate"][split] - 0.25) < 0.06
    hist = meta["id_histograms"]["C2"]
    assert sum(hist["rows_per_bucket"]) == 5143 and hist["distinct_train_values"] <= 400


def test_bayes_auc_is_the_auc_of_the_true_probabilities(planted: Path) -> None:
    """Recompute the observable logit from the written rows and the saved truth."""
    meta = read_meta(planted)
    truth = np.load(planted / TRUTH_FILE)
    for split in ("train", "test"):
        t = _split(planted, split)
        e = [truth[f"E_{c}"].astype(np.float64)[t.column(c).to_numpy()] for c in meta["sparse_features"]]
        pairs = sum((e[i] * e[j]).sum(axis=1) for i in range(len(e)) for j in range(i + 1, len(e)))
        dense = np.stack([t.column(c).to_numpy() for c in meta["dense_features"]], axis=1).astype(np.float64)
        z = float(truth["bias"]) + pairs + dense @ truth["dense_weights"]
        labels = t.column("label").to_numpy()
        assert binary_auc(z, labels) == pytest.approx(meta["bayes_auc"][split], abs=2e-4)  # float32 z in meta


def test_deterministic_and_seed_dependent(planted: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_planted(again, SPEC, save_truth=True)
    assert (again / "meta.json").read_bytes() == (planted / "meta.json").read_bytes()
    assert _split(again, "test").equals(_split(planted, "test"))
    other = tmp_path / "other"
    generate_planted(other, PlantedSpec(**{**SPEC.__dict__, "seed": 8}))
    assert not _split(other, "test").equals(_split(planted, "test"))


def test_reader_streams_it(planted: Path) -> None:
    stream = ParquetBatchStream(planted, "train", 128)
    assert stream.num_dense == 2 and stream.table_sizes == {"C1": 50, "C2": 400, "C3": 1000}
    first = next(iter(stream)).batch
    assert first.dense_features.shape == (128, 2) and first.labels.shape == (128,)
    assert first.sparse_features.keys() == ["C1", "C2", "C3"]
    assert len(stream) == 5143 // 128


def test_auc_helpers_match_torchmetrics() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(2000), 2)  # ties
    labels = rng.random(2000) < scores
    ref = float(binary_auroc(torch.tensor(scores), torch.tensor(labels).long()))
    assert binary_auc(scores, labels) == pytest.approx(ref, abs=1e-6)
    assert np.isnan(binary_auc(scores, np.zeros(2000)))
    # Soft labels: the expectation over label draws, checked by Monte Carlo.
    p = rng.random(300)
    draws = [binary_auc(p, rng.random(300) < p) for _ in range(400)]
    assert expected_auc(p, p) == pytest.approx(np.mean(draws), abs=0.01)


def test_cli_planted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    rc = prep_main(
        [
            "planted",
            str(out),
            "--rows",
            "2000",
            "--tables",
            "2",
            "--cardinality",
            "100",
            "--rank",
            "2",
            "--zipf",
            "1.3",
            "--noise",
            "0",
            "--seed",
            "3",
            "--dense",
            "1",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "Bayes-optimal AUC: train" in text
    meta = json.loads((out / "meta.json").read_text())
    assert (
        meta["planted"]["noise"] == 0 and meta["planted"]["rank"] == 2 and meta["table_sizes"] == {"C1": 100, "C2": 100}
    )
    assert prep_main(["planted", str(out), "--rows", "10", "--tables", "2"]) == 2  # exists, no --overwrite
    assert prep_main(["planted", str(tmp_path / "x"), "--rows", "10", "--tables", "3", "--cardinality", "1,2"]) == 2
    assert "--cardinality needs 1 or 3 values" in capsys.readouterr().err
