"""Train on 2 gloo ranks, collapse owner-side into a serving directory, load it elsewhere.

One 2-rank job (tests/workers/serving_export_worker.py) trains a small MLET DLRM on the Criteo
sample with every MLET sharding kind, writes the serving directory for a 4-rank topology, and
reloads it on its 2 ranks with a row-wise plan. Then the serving directory is loaded

- here, in one process, into a TorchRec DLRM built with torch and TorchRec alone (no mlet_dist);
- by mlet-predict (fp32, and int8 against fp32);
- on 4 ranks (tests/workers/serving_load_worker.py) into a DMP-sharded model, once with TorchRec
  alone (stock sharder, plan parsed from JSON, DCP's own reader) and once via load_serving_sharded.

Every load must give the trained model's test predictions within 1e-5.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch

from dist_launch import ROOT, torchrun

EXPORT_WORKER = ROOT / "tests" / "workers" / "serving_export_worker.py"
LOAD_WORKER = ROOT / "tests" / "workers" / "serving_load_worker.py"
TOLERANCE = 1e-5
K, D = 32, 8  # serving_export_worker


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from data_prep.criteo import prepare_criteo_kaggle

    root = tmp_path_factory.mktemp("serving_dist")
    data = root / "data"
    prepare_criteo_kaggle(str(ROOT / "data_prep/samples/criteo_sample.tsv"), data)
    serving, preds = root / "serving", root / "trained.pt"
    torchrun(EXPORT_WORKER, ["--data", str(data), "--out", str(serving), "--preds", str(preds)], nproc=2)
    result = torch.load(preds, weights_only=True)
    meta = json.loads((data / "meta.json").read_text())
    return SimpleNamespace(root=root, data=data, serving=serving, result=result, meta=meta)


def test_owner_side_collapse_reloaded_on_another_plan_matches_trained(exported) -> None:
    r = exported.result
    for kind in ("table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel"):
        assert kind in r["training_plan"]
    assert "row_wise" in r["reload_plan"] and "column_wise" not in r["reload_plan"]
    assert r["probs"].numel() == exported.meta["splits"]["test"]["rows"]
    assert (r["collapsed_probs"] - r["probs"]).abs().max() <= TOLERANCE
    n_total = sum(exported.meta["table_sizes"].values())
    assert r["k_bytes"] == n_total * K * 4  # every k-wide cell read exactly once, over both ranks
    assert r["local_k_bytes"] < r["k_bytes"]  # rank 0 read only its shards


def test_manifest_describes_the_collapsed_stock_model(exported) -> None:
    from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection
    from mlet_dist.distributed.collapse import collapse_model
    from torchrec.models.dlrm import DLRMTrain

    manifest = json.loads((exported.serving / "manifest.json").read_text())
    sizes = exported.meta["table_sizes"]
    mlet = DLRMTrain(build_dlrm(
        build_embedding_collection(sizes, EmbeddingSpec(embedding_dim=D, inner_dim=K), device=torch.device("meta")),
        DLRMConfig(dense_in_features=13, bottom_mlp=[16], top_mlp=[16, 1]), dense_device=torch.device("meta")))
    assert set(manifest["checkpoint"]["keys"]) == set(collapse_model(mlet, inplace=True).state_dict())
    assert {t["name"]: (t["num_embeddings"], t["embedding_dim"], t["inner_dim"]) for t in manifest["tables"]} == {
        f"t_{f}": (n, D, K) for f, n in sizes.items()
    }
    assert manifest["tables"][3]["training_sharding"] == "column_wise"
    assert manifest["serving_topology"] == {"world_size": 4, "local_world_size": 4, "compute_device": "cpu"}
    assert manifest["dataset"]["table_sizes"] == sizes and len(manifest["dataset"]["meta_sha256"]) == 64
    assert manifest["source"] == {"world_size": 2, "test": "serving_export_worker"}
    assert {"checkpoint/.metadata", "checkpoint/__0_0.distcp", "checkpoint/__1_0.distcp",
            "serving_plan.json"} == set(manifest["files"])


def test_stock_torchrec_loads_it_in_one_process(exported) -> None:
    """Only torch and TorchRec build and fill the model (DCP's stock reader)."""
    import torch.distributed.checkpoint as dcp
    from torchrec.models.dlrm import DLRM, DLRMTrain
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    m = json.loads((exported.serving / "manifest.json").read_text())["model"]
    tables = [EmbeddingBagConfig(name=t["name"], num_embeddings=t["num_embeddings"], embedding_dim=t["embedding_dim"],
                                 feature_names=t["feature_names"], pooling=PoolingType[t["pooling"]]) for t in m["tables"]]
    model = DLRMTrain(DLRM(embedding_bag_collection=EmbeddingBagCollection(tables=tables),
                           dense_in_features=m["dense_in_features"], dense_arch_layer_sizes=m["dense_arch_layer_sizes"],
                           over_arch_layer_sizes=m["over_arch_layer_sizes"]))
    assert m["bottom_mlp_output"] == "linear"  # the default: the manifest says to drop the last bottom ReLU
    model.model.dense_arch.model._mlp[-1]._activation_fn = torch.nn.Identity()
    state = model.state_dict()
    dcp.load(state, checkpoint_id=str(exported.serving / "checkpoint"), no_dist=True)
    model.load_state_dict(state)
    assert not any(type(x).__module__.startswith("mlet_dist") for x in model.modules())

    from mlet_dist.data.parquet_batches import ParquetBatchStream  # the data, not the model
    from mlet_dist.training.evaluation import predict

    probs = predict(model, ParquetBatchStream(exported.data, "test", 128, drop_last=False), torch.device("cpu"), 1).probs
    assert (probs - exported.result["probs"]).abs().max() <= TOLERANCE


def test_mlet_predict_fp32_and_int8(exported, tmp_path: Path) -> None:
    from mlet_dist.serving import predict_cli

    out = tmp_path / "p.parquet"
    report = predict_cli.predict_main(["--serving", str(exported.serving), "--data", str(exported.data), "--out", str(out),
                               "--batch-size", "256", "--no-progress"])
    probs = torch.tensor(pq.read_table(out).column("prob").to_numpy())
    assert (probs - exported.result["probs"]).abs().max() <= TOLERANCE
    report = predict_cli.predict_main(["--serving", str(exported.serving), "--data", str(exported.data), "--out",
                               str(tmp_path / "q.parquet"), "--precision", "int8", "--compare", "--no-progress"])
    assert abs(report["vs_fp32"]["auc_change"]) <= 0.005
    assert report["table_memory_saved"] > 0.6  # 12 bytes a row (8 + fp16 scale/bias) vs 32


def test_dmp_loads_on_four_ranks(exported, tmp_path: Path) -> None:
    out = tmp_path / "loaded.pt"
    torchrun(LOAD_WORKER, ["--serving", str(exported.serving), "--data", str(exported.data), "--out", str(out)], nproc=4)
    loaded = torch.load(out, weights_only=True)
    assert "table_wise" in loaded["stock_plan"] and "rank:3/cpu" in loaded["stock_plan"]
    assert not [t for t in loaded["stock_types"] if t.startswith("mlet_dist")]
    assert (loaded["stock"] - exported.result["probs"]).abs().max() <= TOLERANCE
    assert (loaded["api"] - exported.result["probs"]).abs().max() <= TOLERANCE
    assert loaded["subgroup_collapse_error"] <= 1e-5
