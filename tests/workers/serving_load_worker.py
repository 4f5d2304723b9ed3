"""Run under torchrun (a world size other than training's): load a serving directory into a
DMP-sharded model twice and write the test predictions of each (rank 0, torch.save):

- "stock": with torch and TorchRec alone, as a serving stack without mlet_dist would: the model
  built from manifest.json (TorchRec's EmbeddingBagCollection, DLRM, DLRMTrain), the serving
  plan parsed from its JSON into TorchRec's ParameterSharding, TorchRec's own sharder, DMP, and
  DCP's stock reader;
- "api": mlet_dist.serving.load_serving_sharded (checked directory, allow-listed reader, the
  saved plan since it was made for this world size).

It also runs the owner-side collapse on a synthetic 4-rank state dict whose column shards sit on
a subset of the ranks (a reduce in a sub-group), which the 2-rank export cannot show.

Batches come from mlet_dist's parquet reader in both cases (data loading, not the model).
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata  # noqa: E402
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder  # noqa: E402
from torchrec.distributed.model_parallel import DistributedModelParallel  # noqa: E402
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding, ShardingPlan  # noqa: E402
from torchrec.models.dlrm import DLRM, DLRMTrain  # noqa: E402
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType  # noqa: E402
from torchrec.modules.embedding_modules import EmbeddingBagCollection  # noqa: E402


def stock_model(manifest: dict) -> DLRMTrain:
    m = manifest["model"]
    assert m["arch"] == "dlrm"
    tables = [
        EmbeddingBagConfig(name=t["name"], num_embeddings=t["num_embeddings"], embedding_dim=t["embedding_dim"],
                           feature_names=t["feature_names"], pooling=PoolingType[t["pooling"]])
        for t in m["tables"]
    ]
    meta = torch.device("meta")
    model = DLRM(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables, device=meta),
        dense_in_features=m["dense_in_features"], dense_arch_layer_sizes=m["dense_arch_layer_sizes"],
        over_arch_layer_sizes=m["over_arch_layer_sizes"], dense_device=meta,
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
                spec = EnumerableShardingSpec([
                    ShardMetadata(shard_offsets=s["shard_offsets"], shard_sizes=s["shard_sizes"],
                                  placement=s["placement"]) for s in e["shards"]
                ])
            entries[name] = ParameterSharding(sharding_type=e["sharding_type"], compute_kernel=e["compute_kernel"],
                                              ranks=e.get("ranks"), sharding_spec=spec)
        plan[module] = EmbeddingModuleShardingPlan(entries)
    return ShardingPlan(plan=plan)


def subgroup_collapse_error(rank: int, world: int) -> float:
    """collapse_state_dict on a synthetic state: a column-wise table whose shards sit on ranks 1
    and 3 only (a reduce in a sub-group), one with two column shards on rank 2, a row-wise one
    over all ranks and a replicated one; max |difference| from T·W computed whole."""
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardedTensorMetadata, TensorProperties

    from mlet_dist.distributed.collapse import collapse_state_dict

    n, k, d = 50, 12, 4
    full = {name: torch.randn(n, k, generator=torch.Generator().manual_seed(i)) for i, name in enumerate("abcd")}
    proj = {name: torch.randn(k, d, generator=torch.Generator().manual_seed(10 + i)) for i, name in enumerate("abcd")}

    def st(t: torch.Tensor, pieces):  # type: ignore[no-untyped-def]
        metas = [ShardMetadata(list(off), list(size), placement=f"rank:{r}/cpu") for off, size, r in pieces]
        local = [Shard(t[o[0]:o[0] + s[0], o[1]:o[1] + s[1]].clone(), m) for (o, s, r), m in zip(pieces, metas) if r == rank]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serving", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cpu = torch.device("cpu")

    manifest = json.loads((args.serving / "manifest.json").read_text())
    assert manifest["serving_topology"]["world_size"] == world
    stock = DistributedModelParallel(stock_model(manifest), device=cpu, plan=stock_plan(args.serving / "serving_plan.json"),
                                     sharders=[EmbeddingBagCollectionSharder()])
    state = stock.state_dict()
    dcp.load(state, checkpoint_id=str(args.serving / "checkpoint"))
    stock.load_state_dict(state)

    from mlet_dist.data.parquet_batches import ParquetBatchStream
    from mlet_dist.log_setup import quiet_library_logs
    from mlet_dist.serving import load_serving_sharded
    from mlet_dist.training.evaluation import predict

    quiet_library_logs()
    api, _ = load_serving_sharded(args.serving, cpu)

    def probs(model: torch.nn.Module) -> torch.Tensor:
        stream = ParquetBatchStream(args.data, "test", 128, rank, world, drop_last=False)
        return predict(model, stream, cpu, world).probs

    result = {"stock": probs(stock), "api": probs(api), "stock_plan": str(stock.plan), "api_plan": str(api.plan),
              "stock_types": sorted({type(m).__module__ + "." + type(m).__name__ for m in stock.modules()}),
              "subgroup_collapse_error": subgroup_collapse_error(rank, world)}
    if rank == 0:
        torch.save(result, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
