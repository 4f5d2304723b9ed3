"""mlet-export: TorchScript predict modules, contract, safetensors weights, sharded quantized tables.

One small MLET DLRM is trained for one epoch on the Criteo sample in this process (so AUCs mean
something), exported as a serving directory and then as an artifact; every test reads those.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import pytest
import torch

from dist_launch import ROOT
from mlet_dist.serving import ServingDirError, write_serving_dir, load_serving_model, predict_cli
from mlet_dist.serving.export_artifact import (
    ARTIFACT,
    CONTRACT,
    WEIGHTS,
    ArtifactError,
    export_artifact,
    load_predict_module,
    open_artifact,
)
from mlet_dist.serving.contract import request_from_kjt
from mlet_dist.serving.model import ServingModelConfig
from mlet_dist.serving.export_predict_module import build_predict_module
from mlet_dist.serving.export_weights import load_weights_model, read_weights
from mlet_dist.serving.scoring import ScoringStream, rows_per_feature
from mlet_dist.training.evaluation import Predictions

BATCH = 512


def _train_one_epoch(model: torch.nn.Module, data: Path) -> None:
    from mlet_dist.data.parquet_batches import ParquetBatchStream

    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    model.train()
    for loaded in ParquetBatchStream(data, "train", 256, drop_last=True):
        opt.zero_grad()
        model(loaded.batch)[0].backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from data_prep.criteo import prepare_criteo_kaggle
    from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection
    from torchrec.models.dlrm import DLRMTrain

    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    prepare_criteo_kaggle(str(ROOT / "data_prep/samples/criteo_sample.tsv"), data)
    meta = json.loads((data / "meta.json").read_text())
    sizes = {f: int(meta["table_sizes"][f]) for f in meta["sparse_features"]}
    spec = EmbeddingSpec(embedding_dim=8, inner_dim=16, mlet=True)
    mlps = DLRMConfig(dense_in_features=len(meta["dense_features"]), bottom_mlp=[16], top_mlp=[16, 1])
    torch.manual_seed(7)
    model = DLRMTrain(build_dlrm(build_embedding_collection(sizes, spec), mlps))
    _train_one_epoch(model, data)
    config = ServingModelConfig.from_train_config(
        SimpleNamespace(embedding=spec, dlrm=mlps), sizes, len(meta["dense_features"])
    )
    serving = write_serving_dir(model, root / "serving", config, dataset=data).path
    artifact = export_artifact(serving, root / "artifact")
    return SimpleNamespace(root=root, data=data, serving=serving, artifact=artifact, meta=meta)


def _requests(exported: SimpleNamespace, split: str) -> "tuple[List[Dict[str, torch.Tensor]], torch.Tensor]":
    manifest = json.loads((exported.serving / "manifest.json").read_text())
    stream = ScoringStream(exported.data, split, BATCH, rows_per_feature(manifest["tables"]))
    features = [f["name"] for f in exported.artifact.contract["sparse_features"]]
    batches = list(stream)
    return [request_from_kjt(b.dense, b.sparse, features) for b in batches], torch.cat([b.labels for b in batches])


def _score(module: torch.nn.Module, requests: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([module(r)["default"] for r in requests])


# --- the TorchScript modules ---------------------------------------------------------------------


def test_scripted_fp32_equals_mlet_predict_on_the_held_in_rows(exported, tmp_path: Path) -> None:
    out = tmp_path / "p.parquet"
    report = predict_cli.predict_main(
        [
            "--serving",
            str(exported.serving),
            "--data",
            str(exported.data),
            "--split",
            "train",
            "--out",
            str(out),
            "--batch-size",
            "1000",
            "--no-progress",
        ]
    )
    import pyarrow.parquet as pq

    expected = torch.from_numpy(pq.read_table(out).column("prob").to_numpy())
    requests, _ = _requests(exported, "train")
    scripted = _score(load_predict_module(exported.artifact.path, "fp32"), requests)
    assert scripted.numel() == report["rows"] == exported.meta["splits"]["train"]["rows"]
    assert (scripted - expected).abs().max() <= 1e-6


def test_int8_and_fp16_auc_within_0_001_of_fp32(exported) -> None:
    requests, labels = _requests(exported, "test")
    auc = {
        p: Predictions(_score(load_predict_module(exported.artifact.path, p), requests), labels).metrics()["auc"]
        for p in ("fp32", "fp16", "int8")
    }
    assert auc["fp32"] > 0.6  # a trained model: the comparison means something
    assert abs(auc["int8"] - auc["fp32"]) <= 0.001
    assert abs(auc["fp16"] - auc["fp32"]) <= 0.001
    checks = exported.artifact.manifest["checks"]
    assert checks["fp32"]["max_abs_prob_diff_vs_eager_fp32"] == 0.0
    assert 0 < checks["int8"]["max_abs_prob_diff_vs_eager_fp32"] < 5e-3  # quantized, and close


CLEAN_LOADER = r"""
import json, sys
class NoProjectImports:  # any import of these fails loudly instead of being satisfied
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torchrec", "mlet_dist", "data_prep"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, NoProjectImports())
import torch, fbgemm_gpu
artifact, request_file = sys.argv[1], sys.argv[2]
raw = json.load(open(request_file))
batch = {"float_features": torch.tensor(raw["float_features"], dtype=torch.float32),
         "id_list_features.lengths": torch.tensor(raw["id_list_features.lengths"], dtype=torch.int32),
         "id_list_features.values": torch.tensor(raw["id_list_features.values"], dtype=torch.int64)}
out = {p: torch.jit.load(f"{artifact}/predict_{p}.pt")(batch)["default"].tolist() for p in ("fp32", "fp16", "int8")}
project = sorted(m for m in sys.modules if m.split(".")[0] in ("torchrec", "mlet_dist", "data_prep"))
print(json.dumps({"probs": out, "project_modules": project, "path": sys.path}))
"""


def test_scripted_modules_load_with_torch_and_fbgemm_only(exported, tmp_path: Path) -> None:
    requests, _ = _requests(exported, "val")
    request = {k: v[: 26 * 64].tolist() if k != "float_features" else v.tolist() for k, v in requests[0].items()}
    request["float_features"] = request["float_features"][:64]  # 64 rows: lengths/values feature-major
    lengths = requests[0]["id_list_features.lengths"].view(26, -1)[:, :64]
    values = requests[0]["id_list_features.values"].view(26, -1)[:, :64]
    request["id_list_features.lengths"], request["id_list_features.values"] = (
        lengths.reshape(-1).tolist(),
        values.reshape(-1).tolist(),
    )
    (tmp_path / "request.json").write_text(json.dumps(request))
    (tmp_path / "loader.py").write_text(CLEAN_LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            str(tmp_path / "loader.py"),
            str(exported.artifact.path),
            str(tmp_path / "request.json"),
        ],
        cwd=tmp_path,
        env=dict(env, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["project_modules"] == []
    assert not any(str(ROOT) == p or p.startswith(str(ROOT / "mlet_dist")) for p in result["path"])
    small = {k: torch.tensor(v) for k, v in request.items()}
    small["float_features"] = small["float_features"].float()
    small["id_list_features.lengths"] = small["id_list_features.lengths"].int()
    for precision, probs in result["probs"].items():
        here = _score(load_predict_module(exported.artifact.path, precision), [small])
        assert len(probs) == 64
        assert (torch.tensor(probs) - here).abs().max() <= 1e-6


# --- contract ------------------------------------------------------------------------------------


def test_contract_gives_feature_order_dense_transform_and_oov_id(exported) -> None:
    contract = exported.artifact.contract
    assert [f["name"] for f in contract["sparse_features"]] == exported.meta["sparse_features"]
    assert contract["inputs"]["float_features"]["columns"] == exported.meta["dense_features"]
    assert contract["inputs"]["float_features"]["transform"] == exported.meta["dense_transform"]
    assert contract["oov_id"] == 0 and all(f["oov_id"] == 0 and not f["hashed"] for f in contract["sparse_features"])
    assert [f["num_embeddings"] for f in contract["sparse_features"]] == [
        exported.meta["table_sizes"][f] for f in exported.meta["sparse_features"]
    ]
    assert exported.artifact.manifest["interface"]["inputs"] == [
        "float_features",
        "id_list_features.lengths",
        "id_list_features.values",
    ]


# --- safetensors ---------------------------------------------------------------------------------


def test_safetensors_weights_equal_the_dcp_checkpoint_and_load_without_pickle(exported, monkeypatch) -> None:
    served, _ = load_serving_model(exported.serving)
    path = exported.artifact.path / WEIGHTS

    def no_pickle(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("pickle used while reading safetensors")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    state, config = read_weights(path)
    model = load_weights_model(path)
    monkeypatch.undo()
    expected = served.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert config == ServingModelConfig.from_dict(json.loads((exported.serving / "manifest.json").read_text())["model"])
    requests, _ = _requests(exported, "val")
    assert torch.equal(
        _score(build_predict_module(model), requests[:1]), _score(build_predict_module(served), requests[:1])
    )
    header = int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: u64 header size, JSON header
    assert json.loads(path.read_bytes()[8 : 8 + header])["__metadata__"]["format"] == "mlet-serving-weights"


# --- bad input -----------------------------------------------------------------------------------


def _flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_serving_dir_with_bad_checksums_is_refused(exported, tmp_path: Path) -> None:
    bad = tmp_path / "serving"
    shutil.copytree(exported.serving, bad)
    _flip_byte(next((bad / "checkpoint").glob("*.distcp")))
    with pytest.raises(ServingDirError, match="sha256 differs"):
        export_artifact(bad, tmp_path / "a")
    from mlet_dist.serving import export_cli

    with pytest.raises(SystemExit, match="sha256 differs"):
        export_cli.main([str(bad), str(tmp_path / "b")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("damage", ["flip_module", "flip_weights", "extra_file", "missing_contract", "edited_listing"])
def test_artifact_whose_files_disagree_with_its_listing_is_refused(exported, tmp_path: Path, damage: str) -> None:
    bad = tmp_path / "artifact"
    shutil.copytree(exported.artifact.path, bad)
    if damage == "flip_module":
        _flip_byte(bad / "predict_int8.pt")
    elif damage == "flip_weights":
        _flip_byte(bad / WEIGHTS)
    elif damage == "extra_file":
        (bad / "predict_int4.pt").write_bytes(b"x")
    elif damage == "missing_contract":
        (bad / CONTRACT).unlink()
    else:
        listing = json.loads((bad / ARTIFACT).read_text())
        listing["files"]["predict_fp32.pt"]["sha256"] = "0" * 64
        (bad / ARTIFACT).write_text(json.dumps(listing))
    with pytest.raises(ArtifactError, match="disagree"):
        open_artifact(bad)
    with pytest.raises(ArtifactError, match="disagree"):
        load_predict_module(bad, "fp32")
    open_artifact(exported.artifact.path)  # the original still passes


def test_export_refuses_existing_output_and_unknown_precision(exported, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="already exists"):
        export_artifact(exported.serving, exported.artifact.path)
    with pytest.raises(ValueError, match="precisions"):
        export_artifact(exported.serving, tmp_path / "x", ["int4"])
    with pytest.raises(ArtifactError, match="no fp16 module"):
        from mlet_dist.serving.export_artifact import Artifact

        Artifact(exported.artifact.path, {**exported.artifact.manifest, "precisions": ["fp32"]}).module_path("fp16")
