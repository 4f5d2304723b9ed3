"""mlet-predict --raw: raw Criteo/Avazu lines scored through the training dataset's saved vocabulary.

The raw path must give the prepared-data path's probabilities (same parser, same dense transform,
same ids: rare train values, unseen values and hashed features included), count the values that
got the OOV id, and report a malformed line by its number while the others are still scored.
"""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torchrec.models.dlrm import DLRMTrain

from dist_launch import ROOT
from data_prep.vocabulary import Vocabulary
from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection
from mlet_dist.serving import ServingModelConfig, write_serving_dir, load_serving_model, predict_cli
from mlet_dist.serving.scoring import ScoringStream, rows_per_feature, score

CRITEO_SAMPLE = ROOT / "data_prep/samples/criteo_sample.tsv"
AVAZU_SAMPLE = ROOT / "data_prep/samples/avazu_sample.csv"


def _served(root: Path, data: Path, seed: int) -> Path:
    meta = json.loads((data / "meta.json").read_text())
    sizes = {f: int(meta["table_sizes"][f]) for f in meta["sparse_features"]}
    spec = EmbeddingSpec(embedding_dim=4, inner_dim=8, mlet=True)
    mlps = DLRMConfig(dense_in_features=len(meta["dense_features"]), bottom_mlp=[8, 4], top_mlp=[8, 1])
    torch.manual_seed(seed)
    model = DLRMTrain(build_dlrm(build_embedding_collection(sizes, spec), mlps)).eval()
    with torch.no_grad():  # spread the tables so that a wrong id moves the probability visibly
        for name, p in model.named_parameters():
            if "embedding_bags" in name:
                p.normal_(0.0, 1.0)
    config = ServingModelConfig.from_train_config(
        SimpleNamespace(embedding=spec, dlrm=mlps), sizes, len(meta["dense_features"])
    )
    return write_serving_dir(model, root / "serving", config, dataset=data).path


@pytest.fixture(scope="module")
def criteo(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from data_prep.criteo import prepare_criteo_kaggle

    root = tmp_path_factory.mktemp("raw_criteo")
    data = root / "data"
    # min_count 2: rare train values -> OOV; hash_size 1000: C7 and C11 are hashed
    prepare_criteo_kaggle(str(CRITEO_SAMPLE), data, min_count=2, hash_size=1000)
    meta = json.loads((data / "meta.json").read_text())
    assert meta["hashed_features"] and meta["rows_rejected"] == 0
    return SimpleNamespace(root=root, data=data, serving=_served(root, data, 5), meta=meta)


def _predict(args: List[object]) -> Dict:
    return predict_cli.predict_main([str(a) for a in args] + ["--no-progress"])


def _prepared_probs(serving: Path, data: Path, splits: List[str]) -> np.ndarray:
    """The prepared-data path's probabilities of the given splits, concatenated in order."""
    model, sd = load_serving_model(serving)
    tables = rows_per_feature(sd.manifest["tables"])
    return np.concatenate([score(model, ScoringStream(data, s, 500, tables), False).probs.numpy() for s in splits])


def test_raw_criteo_sample_scores_like_the_prepared_data(criteo, tmp_path: Path) -> None:
    # the 7-chunk split keeps input order: train + test + val are the sample's lines 1..9000 (the
    # reference DLRM split: the last chunk's first, ceil half is test)
    expected = _prepared_probs(criteo.serving, criteo.data, ["train", "test", "val"])
    out = tmp_path / "raw.parquet"
    report = _predict(
        [
            "--serving",
            criteo.serving,
            "--raw",
            CRITEO_SAMPLE,
            "--out",
            out,
            "--batch-size",
            1000,
            "--metrics-out",
            tmp_path / "m.json",
        ]
    )  # --data: from the serving manifest
    table = pq.read_table(out)
    assert table.column_names == ["prob", "label", "line"]
    assert table.column("line").to_pylist() == list(range(1, 9001))
    got = table.column("prob").to_numpy()
    assert np.abs(got - expected).max() <= 1e-6
    labels = [int(line.split("\t", 1)[0]) for line in CRITEO_SAMPLE.read_text().splitlines()]
    assert table.column("label").to_pylist() == labels
    raw = report["raw"]
    assert (raw["rows_read"], raw["rows_scored"], raw["rows_rejected"]) == (9000, 9000, 0)
    # every value the prepared data holds as id 0 in an exact feature came back as the OOV id
    zeros = 0
    for split in ("train", "val", "test"):
        for part in criteo.meta["splits"][split]["files"]:
            t = pq.read_table(criteo.data / part)
            zeros += sum(
                int((t.column(f).to_numpy() == 0).sum())
                for f in criteo.meta["sparse_features"]
                if f not in criteo.meta["hashed_features"]
            )
    assert raw["unknown_total"] == zeros > 0
    assert json.loads((tmp_path / "m.json").read_text())["raw"]["unknown_total"] == zeros


def test_raw_rows_without_labels_score_the_same(criteo, tmp_path: Path) -> None:
    lines = CRITEO_SAMPLE.read_text().splitlines()[-300:]
    request = tmp_path / "request.tsv"
    request.write_text("".join(line.split("\t", 1)[1] + "\n" for line in lines))
    labeled = tmp_path / "labeled.tsv"
    labeled.write_text("".join(line + "\n" for line in lines))
    a = _predict(
        ["--serving", criteo.serving, "--data", criteo.data, "--raw", request, "--out", tmp_path / "a.parquet"]
    )
    b = _predict(
        ["--serving", criteo.serving, "--data", criteo.data, "--raw", labeled, "--out", tmp_path / "b.parquet"]
    )
    assert a["labels"] is False and "auc" not in a["metrics"] and b["labels"] is True
    ta, tb = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert ta.column_names == ["prob", "line"]
    assert ta.column("prob").to_pylist() == tb.column("prob").to_pylist()


def test_malformed_raw_rows_are_reported_by_line_and_the_others_scored(criteo, tmp_path: Path, capsys) -> None:
    sample = CRITEO_SAMPLE.read_text().splitlines()
    good = sample[:5]
    unknown = good[2].split("\t")
    unknown[14] = "deadbeef"  # C1: a valid value the training vocabulary does not hold
    bad_hex = good[3].split("\t")
    bad_hex[16] = "ZZ"  # C3 is not 8 lowercase hex digits
    lines = [good[0], good[1], "\t".join(bad_hex), "1\t2\t3", "\t".join(unknown), good[4]]
    raw = tmp_path / "mixed.tsv"
    raw.write_text("\n".join(lines) + "\n")
    out = tmp_path / "mixed.parquet"
    report = _predict(["--serving", criteo.serving, "--raw", raw, "--out", out, "--batch-size", 2])
    r = report["raw"]
    assert (r["rows_read"], r["rows_scored"], r["rows_rejected"]) == (6, 4, 2)
    assert [x["line"] for x in r["rejects"]] == [3, 4]
    assert "C3 must be 8 lowercase hex digits" in r["rejects"][0]["reason"]
    assert "expected 40" in r["rejects"][1]["reason"]
    printed = capsys.readouterr().out
    assert f"rejected {raw}:3: C3 must be" in printed and f"rejected {raw}:4: expected 40" in printed
    table = pq.read_table(out)
    assert table.column("line").to_pylist() == [1, 2, 5, 6]
    # the good lines score as in the whole sample; the unknown one counts one more OOV value in C1
    full = _predict(["--serving", criteo.serving, "--raw", CRITEO_SAMPLE, "--out", tmp_path / "full.parquet"])
    probs = pq.read_table(tmp_path / "full.parquet").column("prob").to_numpy()
    assert np.abs(table.column("prob").to_numpy()[[0, 1, 3]] - probs[[0, 1, 4]]).max() <= 1e-6
    vocab = Vocabulary.load(criteo.data)
    base = {
        f: vocab.encode(f, [good[i].split("\t")[14 + j] for i in (0, 1, 2, 4)]).unknown
        for j, f in enumerate(criteo.meta["sparse_features"])
    }
    base["C1"] += vocab.encode("C1", ["deadbeef"]).unknown - vocab.encode("C1", [good[2].split("\t")[14]]).unknown
    assert r["unknown_values"] == base and r["unknown_values"]["C1"] >= 1
    assert full["raw"]["rows_rejected"] == 0


def test_raw_avazu_lines_with_and_without_the_click_column(tmp_path: Path) -> None:
    from data_prep.avazu import prepare_avazu

    data = tmp_path / "data"
    prepare_avazu(str(AVAZU_SAMPLE), data)
    serving = _served(tmp_path, data, 7)
    meta = json.loads((data / "meta.json").read_text())
    expected = _prepared_probs(serving, data, ["test"])
    # the random split: the test rows are the lines whose split code says test; recover them by id
    lines = AVAZU_SAMPLE.read_text().splitlines()
    report = _predict(["--serving", serving, "--raw", AVAZU_SAMPLE, "--out", tmp_path / "all.parquet"])
    assert report["raw"]["rows_read"] == len(lines) - 1 == meta["rows_read"]
    table = pq.read_table(tmp_path / "all.parquet")
    from data_prep.splits import RandomSplit

    codes = RandomSplit(meta["split"].get("seed", 0))
    assert table.num_rows == meta["rows_read"] - meta["rows_rejected"]
    test_lines = np.asarray(table.column("line").to_numpy())
    split = codes.assign(0, test_lines, 0, 0)
    got = table.column("prob").to_numpy()[split == 2]
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-6
    # a request without the click column (header too) scores the same
    header = lines[0].split(",")
    request = tmp_path / "request.csv"
    request.write_text(
        "\n".join(",".join(v for i, v in enumerate(line.split(",")) if i != 1) for line in lines[:201]) + "\n"
    )
    assert header[1] == "click"
    unlabeled = _predict(["--serving", serving, "--raw", request, "--out", tmp_path / "req.parquet"])
    assert unlabeled["labels"] is False
    assert pq.read_table(tmp_path / "req.parquet").column("prob").to_pylist() == table.column("prob").to_pylist()[:200]


def test_raw_user_mistakes_are_one_line(criteo, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="give --data DATA"):
        _predict(["--serving", criteo.serving, "--out", tmp_path / "x.parquet"])
    with pytest.raises(SystemExit, match="raw input file not found"):
        _predict(["--serving", criteo.serving, "--raw", tmp_path / "nope.tsv", "--out", tmp_path / "x.parquet"])
    with pytest.raises(SystemExit, match="--max-batches"):
        _predict(
            ["--serving", criteo.serving, "--raw", CRITEO_SAMPLE, "--max-batches", "1", "--out", tmp_path / "x.parquet"]
        )
    other = tmp_path / "other"
    shutil.copytree(criteo.data, other)
    meta = json.loads((other / "meta.json").read_text())
    del meta["vocabulary"]
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="not the meta.json the model was trained with"):
        _predict(
            ["--serving", criteo.serving, "--data", other, "--raw", CRITEO_SAMPLE, "--out", tmp_path / "x.parquet"]
        )
