"""Train on 2 gloo ranks, collapse owner-side into a serving directory, load it elsewhere.

One 2-rank job (train_and_export) trains a small MLET DLRM on the Criteo
sample with every MLET sharding kind, writes the serving directory for a 4-rank topology, and
reloads it on its 2 ranks with a row-wise plan. Then the serving directory is loaded

- here, in one process, into a TorchRec DLRM built with torch and TorchRec alone (no mlet_dist);
- by mlet-predict (fp32, and int8 against fp32);
- on 4 ranks (load_on_ranks) into a DMP-sharded model, once with TorchRec
  alone (stock sharder, plan parsed from JSON, DCP's own reader) and once via load_serving_sharded.

Every load must give the trained model's test predictions within 1e-5.
"""

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional

import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardedTensorMetadata, TensorProperties
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding, ShardingPlan
from torchrec.models.dlrm import DLRM, DLRMTrain
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dist_launch import ROOT
from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream
from mlet_dist.distributed.collapse import collapse_state_dict
from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.sharded_mlet import MLETEmbeddingBagCollectionSharder
from mlet_dist.distributed.sharding import ShardingConfig, shard_model
from mlet_dist.log_setup import quiet_library_logs
from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection
from mlet_dist.serving import ServingModelConfig, ServingTopology, load_serving_sharded
from mlet_dist.serving import write_serving_dir as export_serving
from mlet_dist.training.evaluation import predict
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer
from multiprocess import run_ranks

TOLERANCE = 1e-5
K, D = 32, 8  # train_and_export's MLET tables
EBC = "model.sparse_arch.embedding_bag_collection"
KINDS = [
    table_wise(rank=0),
    table_wise(rank=1),
    row_wise(),
    column_wise(ranks=[0, 1]),
    column_wise(ranks=[1, 1]),
    table_row_wise(host_index=0),
    data_parallel(),
]


def mixed_plan(model: torch.nn.Module, world_size: int) -> ShardingPlan:
    ebc = model.get_submodule(EBC)
    names = [c.name for c in ebc.mlet_configs()]
    per_table = {name: KINDS[i % len(KINDS)] for i, name in enumerate(names)}
    module_plan = construct_module_sharding_plan(
        ebc,
        per_table,
        sharder=MLETEmbeddingBagCollectionSharder(),
        local_size=world_size,
        world_size=world_size,
        device_type="cpu",
    )
    return ShardingPlan(plan={EBC: module_plan})


def train_and_export(env: DistEnv, data: Path, serving: Path, steps: int = 4) -> Optional[Dict[str, Any]]:
    """2 ranks: train a small MLET DLRM a few SGD steps on the prepared Criteo sample with a plan
    that uses every MLET sharding kind (table-wise on each rank, row-wise, column-wise across
    ranks, two column shards on one rank, table-row-wise, data-parallel), then

    1. export a serving directory (owner-side collapse) for a 4-rank CPU serving topology;
    2. load it back on these 2 ranks with a different (row-wise) plan via load_serving_sharded,
       the path train.py takes for its collapsed evaluation;

    rank 0 returns the trained and collapsed test predictions."""
    quiet_library_logs()
    meta = DatasetMeta.load(data)
    spec = EmbeddingSpec(embedding_dim=D, inner_dim=K, mlet=True)
    dlrm = DLRMConfig(dense_in_features=len(meta.dense_features), bottom_mlp=[16], top_mlp=[16, 1])

    def build(device: torch.device) -> torch.nn.Module:
        return DLRMTrain(
            build_dlrm(build_embedding_collection(meta.table_sizes, spec, device=device), dlrm, dense_device=device)
        )

    torch.manual_seed(7 + env.rank)
    model = build(torch.device("meta"))
    optim = OptimConfig(embedding_optimizer="sgd", embedding_lr=0.5, dense_optimizer="sgd", dense_lr=0.5)
    attach_fused_embedding_optimizer(model, optim, env.device.type)
    sharded = shard_model(model, env, ShardingConfig(), plan=mixed_plan(model, env.world_size))
    optimizer = build_optimizer(sharded, optim)
    for loaded in ParquetBatchStream(data, "train", 64, env.rank, env.world_size, max_batches=steps):
        optimizer.zero_grad()
        loss, _ = sharded(loaded.batch)
        loss.backward()
        optimizer.step()

    def test_stream() -> ParquetBatchStream:
        return ParquetBatchStream(data, "test", 128, env.rank, env.world_size, drop_last=False)

    trained = predict(sharded, test_stream(), env.device, env.world_size)
    config = ServingModelConfig.from_train_config(
        SimpleNamespace(embedding=spec, dlrm=dlrm), meta.table_sizes, len(meta.dense_features)
    )
    export = export_serving(
        sharded,
        serving,
        config,
        dataset=data,
        source={"test": "train_and_export"},
        serving_topology=ServingTopology(world_size=4, compute_device="cpu"),
        serving_sharding="table_wise",
        chunk_rows=100,  # several chunks per shard, and uneven ones
    )
    reloaded, _ = load_serving_sharded(export.path, env.device, plan="replan", sharding="row_wise")
    collapsed = predict(reloaded, test_stream(), env.device, env.world_size)
    if not env.is_main:
        return None
    return {
        "probs": trained.probs,
        "labels": trained.labels,
        "collapsed_probs": collapsed.probs,
        "training_plan": str(sharded.plan),
        "reload_plan": str(reloaded.plan),
        "k_bytes": export.stats.total_k_bytes,
        "local_k_bytes": export.stats.local_k_bytes,
    }


def stock_model(manifest: dict) -> DLRMTrain:
    m = manifest["model"]
    assert m["arch"] == "dlrm"
    tables = [
        EmbeddingBagConfig(
            name=t["name"],
            num_embeddings=t["num_embeddings"],
            embedding_dim=t["embedding_dim"],
            feature_names=t["feature_names"],
            pooling=PoolingType[t["pooling"]],
        )
        for t in m["tables"]
    ]
    meta = torch.device("meta")
    model = DLRM(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables, device=meta),
        dense_in_features=m["dense_in_features"],
        dense_arch_layer_sizes=m["dense_arch_layer_sizes"],
        over_arch_layer_sizes=m["over_arch_layer_sizes"],
        dense_device=meta,
    )
    if m["bottom_mlp_output"] == "linear":  # the manifest's one non-TorchRec-default setting
        model.dense_arch.model._mlp[-1]._activation_fn = torch.nn.Identity()
    return DLRMTrain(model)


def stock_plan(path: Path) -> ShardingPlan:
    data = json.loads(path.read_text())
    plan = {}
    for module, tables in data["plan"].items():
        entries = {}
        for name, e in tables.items():
            spec = None
            if e.get("shards"):
                spec = EnumerableShardingSpec(
                    [
                        ShardMetadata(
                            shard_offsets=s["shard_offsets"], shard_sizes=s["shard_sizes"], placement=s["placement"]
                        )
                        for s in e["shards"]
                    ]
                )
            entries[name] = ParameterSharding(
                sharding_type=e["sharding_type"],
                compute_kernel=e["compute_kernel"],
                ranks=e.get("ranks"),
                sharding_spec=spec,
            )
        plan[module] = EmbeddingModuleShardingPlan(entries)
    return ShardingPlan(plan=plan)


def subgroup_collapse_error(rank: int, world: int) -> float:
    """collapse_state_dict on a synthetic state: a column-wise table whose shards sit on ranks 1
    and 3 only (a reduce in a sub-group), one with two column shards on rank 2, a row-wise one
    over all ranks and a replicated one; max |difference| from T·W computed whole."""
    n, k, d = 50, 12, 4
    full = {name: torch.randn(n, k, generator=torch.Generator().manual_seed(i)) for i, name in enumerate("abcd")}
    proj = {name: torch.randn(k, d, generator=torch.Generator().manual_seed(10 + i)) for i, name in enumerate("abcd")}

    def st(t: torch.Tensor, pieces):  # type: ignore[no-untyped-def]
        metas = [ShardMetadata(list(off), list(size), placement=f"rank:{r}/cpu") for off, size, r in pieces]
        local = [
            Shard(t[o[0] : o[0] + s[0], o[1] : o[1] + s[1]].clone(), m)
            for (o, s, r), m in zip(pieces, metas)
            if r == rank
        ]
        md = ShardedTensorMetadata(metas, t.shape, TensorProperties(dtype=t.dtype))
        return ShardedTensor._init_from_local_shards_and_global_metadata(local, md)

    rows = [(r * 13, min(13, n - r * 13)) for r in range(world)]
    state = {
        "e.wide.embedding_bags.a.weight": st(full["a"], [((0, 0), (n, 7), 1), ((0, 7), (n, 5), 3)]),
        "e.projections.a.weight": st(proj["a"], [((0, 0), (7, d), 1), ((7, 0), (5, d), 3)]),
        "e.wide.embedding_bags.b.weight": st(full["b"], [((0, 0), (n, 6), 2), ((0, 6), (n, 6), 2)]),
        "e.projections.b.weight": st(proj["b"], [((0, 0), (6, d), 2), ((6, 0), (6, d), 2)]),
        "e.wide.embedding_bags.c.weight": st(full["c"], [((o, 0), (s, k), r) for r, (o, s) in enumerate(rows)]),
        "e.projections.c.weight": proj["c"],
        "e.wide.embedding_bags.d.weight": full["d"],
        "e.projections.d.weight": proj["d"],
    }
    collapsed, _ = collapse_state_dict(state, chunk_rows=8)
    worst = 0.0
    for name in "abcd":
        value = collapsed[f"e.embedding_bags.{name}.weight"]
        out = torch.empty(n, d) if rank == 0 else None
        value.gather(dst=0, out=out)
        if rank == 0:
            worst = max(worst, float((out - full[name] @ proj[name]).abs().max()))
    return worst


def load_on_ranks(env: DistEnv, serving: Path, data: Path) -> Optional[Dict[str, Any]]:
    """A world size other than training's: load the serving directory into a DMP-sharded model
    twice; rank 0 returns the test predictions of each:

    - "stock": with torch and TorchRec alone, as a serving stack without mlet_dist would: the
      model built from manifest.json (TorchRec's EmbeddingBagCollection, DLRM, DLRMTrain), the
      serving plan parsed from its JSON into TorchRec's ParameterSharding, TorchRec's own sharder,
      DMP, and DCP's stock reader;
    - "api": mlet_dist.serving.load_serving_sharded (checked directory, allow-listed reader, the
      saved plan since it was made for this world size).

    Also the owner-side collapse on a synthetic 4-rank state dict whose column shards sit on a
    subset of the ranks (a reduce in a sub-group), which the 2-rank export cannot show. Batches
    come from mlet_dist's parquet reader in both cases (data loading, not the model)."""
    rank, world = env.rank, env.world_size
    cpu = torch.device("cpu")

    manifest = json.loads((serving / "manifest.json").read_text())
    assert manifest["serving_topology"]["world_size"] == world
    stock = DistributedModelParallel(
        stock_model(manifest),
        device=cpu,
        plan=stock_plan(serving / "serving_plan.json"),
        sharders=[EmbeddingBagCollectionSharder()],
    )
    state = stock.state_dict()
    dcp.load(state, checkpoint_id=str(serving / "checkpoint"))
    stock.load_state_dict(state)

    quiet_library_logs()
    api, _ = load_serving_sharded(serving, cpu)

    def probs(model: torch.nn.Module) -> torch.Tensor:
        stream = ParquetBatchStream(data, "test", 128, rank, world, drop_last=False)
        return predict(model, stream, cpu, world).probs

    result = {
        "stock": probs(stock),
        "api": probs(api),
        "stock_plan": str(stock.plan),
        "api_plan": str(api.plan),
        "stock_types": sorted({type(m).__module__ + "." + type(m).__name__ for m in stock.modules()}),
        "subgroup_collapse_error": subgroup_collapse_error(rank, world),
    }
    return result if rank == 0 else None


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from data_prep.criteo import prepare_criteo_kaggle

    root = tmp_path_factory.mktemp("serving_dist")
    data = root / "data"
    prepare_criteo_kaggle(str(ROOT / "data_prep/samples/criteo_sample.tsv"), data)
    serving = root / "serving"
    result = run_ranks(train_and_export, world_size=2, args=(data, serving))[0]
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
    from mlet_dist.distributed.collapse import collapse_model

    manifest = json.loads((exported.serving / "manifest.json").read_text())
    sizes = exported.meta["table_sizes"]
    mlet = DLRMTrain(
        build_dlrm(
            build_embedding_collection(sizes, EmbeddingSpec(embedding_dim=D, inner_dim=K), device=torch.device("meta")),
            DLRMConfig(dense_in_features=13, bottom_mlp=[16], top_mlp=[16, 1]),
            dense_device=torch.device("meta"),
        )
    )
    assert set(manifest["checkpoint"]["keys"]) == set(collapse_model(mlet, inplace=True).state_dict())
    assert {t["name"]: (t["num_embeddings"], t["embedding_dim"], t["inner_dim"]) for t in manifest["tables"]} == {
        f"t_{f}": (n, D, K) for f, n in sizes.items()
    }
    assert manifest["tables"][3]["training_sharding"] == "column_wise"
    assert manifest["serving_topology"] == {"world_size": 4, "local_world_size": 4, "compute_device": "cpu"}
    assert manifest["dataset"]["table_sizes"] == sizes and len(manifest["dataset"]["meta_sha256"]) == 64
    assert manifest["source"] == {"world_size": 2, "test": "train_and_export"}
    assert {"checkpoint/.metadata", "checkpoint/__0_0.distcp", "checkpoint/__1_0.distcp", "serving_plan.json"} == set(
        manifest["files"]
    )


def test_stock_torchrec_loads_it_in_one_process(exported) -> None:
    """Only torch and TorchRec build and fill the model (DCP's stock reader)."""
    m = json.loads((exported.serving / "manifest.json").read_text())["model"]
    tables = [
        EmbeddingBagConfig(
            name=t["name"],
            num_embeddings=t["num_embeddings"],
            embedding_dim=t["embedding_dim"],
            feature_names=t["feature_names"],
            pooling=PoolingType[t["pooling"]],
        )
        for t in m["tables"]
    ]
    model = DLRMTrain(
        DLRM(
            embedding_bag_collection=EmbeddingBagCollection(tables=tables),
            dense_in_features=m["dense_in_features"],
            dense_arch_layer_sizes=m["dense_arch_layer_sizes"],
            over_arch_layer_sizes=m["over_arch_layer_sizes"],
        )
    )
    assert m["bottom_mlp_output"] == "linear"  # the default: the manifest says to drop the last bottom ReLU
    model.model.dense_arch.model._mlp[-1]._activation_fn = torch.nn.Identity()
    state = model.state_dict()
    dcp.load(state, checkpoint_id=str(exported.serving / "checkpoint"), no_dist=True)
    model.load_state_dict(state)
    assert not any(type(x).__module__.startswith("mlet_dist") for x in model.modules())

    probs = predict(
        model, ParquetBatchStream(exported.data, "test", 128, drop_last=False), torch.device("cpu"), 1
    ).probs
    assert (probs - exported.result["probs"]).abs().max() <= TOLERANCE


def test_mlet_predict_fp32_and_int8(exported, tmp_path: Path) -> None:
    from mlet_dist.serving import predict_cli

    out = tmp_path / "p.parquet"
    report = predict_cli.predict_main(
        [
            "--serving",
            str(exported.serving),
            "--data",
            str(exported.data),
            "--out",
            str(out),
            "--batch-size",
            "256",
            "--no-progress",
        ]
    )
    probs = torch.tensor(pq.read_table(out).column("prob").to_numpy())
    assert (probs - exported.result["probs"]).abs().max() <= TOLERANCE
    report = predict_cli.predict_main(
        [
            "--serving",
            str(exported.serving),
            "--data",
            str(exported.data),
            "--out",
            str(tmp_path / "q.parquet"),
            "--precision",
            "int8",
            "--compare",
            "--no-progress",
        ]
    )
    assert abs(report["vs_fp32"]["auc_change"]) <= 0.005
    assert report["table_memory_saved"] > 0.6  # 12 bytes a row (8 + fp16 scale/bias) vs 32


def test_dmp_loads_on_four_ranks(exported) -> None:
    loaded = run_ranks(load_on_ranks, world_size=4, args=(exported.serving, exported.data))[0]
    assert "table_wise" in loaded["stock_plan"] and "rank:3/cpu" in loaded["stock_plan"]
    assert not [t for t in loaded["stock_types"] if t.startswith("mlet_dist")]
    assert (loaded["stock"] - exported.result["probs"]).abs().max() <= TOLERANCE
    assert (loaded["api"] - exported.result["probs"]).abs().max() <= TOLERANCE
    assert loaded["subgroup_collapse_error"] <= 1e-5
