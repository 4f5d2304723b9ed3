"""Run under torchrun (2 ranks): train a small MLET DLRM a few SGD steps on the prepared Criteo
sample with a plan that uses every MLET sharding kind (table-wise on each rank, row-wise,
column-wise across ranks, two column shards on one rank, table-row-wise, data-parallel), then

1. export a serving directory (owner-side collapse) for a 4-rank CPU serving topology;
2. load it back on these 2 ranks with a different (row-wise) plan via load_serving_sharded, the
   path train.py takes for its collapsed evaluation;

rank 0 writes the trained and collapsed test predictions (torch.save, read with weights_only).
"""

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from torchrec.distributed.sharding_plan import (  # noqa: E402
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ShardingPlan  # noqa: E402
from torchrec.models.dlrm import DLRMTrain  # noqa: E402

from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream  # noqa: E402
from mlet_dist.distributed.env import init_distributed, shutdown_distributed  # noqa: E402
from mlet_dist.distributed.sharded_mlet import MLETEmbeddingBagCollectionSharder  # noqa: E402
from mlet_dist.distributed.sharding import ShardingConfig, shard_model  # noqa: E402
from mlet_dist.log_setup import quiet_library_logs  # noqa: E402
from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection  # noqa: E402
from mlet_dist.serving import ServingModelConfig, ServingTopology, load_serving_sharded  # noqa: E402
from mlet_dist.serving import write_serving_dir as export_serving  # noqa: E402
from mlet_dist.training.evaluation import predict  # noqa: E402
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer  # noqa: E402

EBC = "model.sparse_arch.embedding_bag_collection"
D, K = 8, 32
KINDS = [table_wise(rank=0), table_wise(rank=1), row_wise(), column_wise(ranks=[0, 1]),
         column_wise(ranks=[1, 1]), table_row_wise(host_index=0), data_parallel()]


def mixed_plan(model: torch.nn.Module, world_size: int) -> ShardingPlan:
    ebc = model.get_submodule(EBC)
    names = [c.name for c in ebc.mlet_configs()]
    per_table = {name: KINDS[i % len(KINDS)] for i, name in enumerate(names)}
    module_plan = construct_module_sharding_plan(
        ebc, per_table, sharder=MLETEmbeddingBagCollectionSharder(), local_size=world_size,
        world_size=world_size, device_type="cpu",
    )
    return ShardingPlan(plan={EBC: module_plan})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preds", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    quiet_library_logs()
    env = init_distributed("gloo")
    meta = DatasetMeta.load(args.data)
    spec = EmbeddingSpec(embedding_dim=D, inner_dim=K, mlet=True)
    dlrm = DLRMConfig(dense_in_features=len(meta.dense_features), bottom_mlp=[16], top_mlp=[16, 1])

    def build(device: torch.device) -> torch.nn.Module:
        return DLRMTrain(build_dlrm(build_embedding_collection(meta.table_sizes, spec, device=device), dlrm,
                                    dense_device=device))

    torch.manual_seed(7 + env.rank)
    model = build(torch.device("meta"))
    optim = OptimConfig(embedding_optimizer="sgd", embedding_lr=0.5, dense_optimizer="sgd", dense_lr=0.5)
    attach_fused_embedding_optimizer(model, optim)
    sharded = shard_model(model, env, ShardingConfig(), plan=mixed_plan(model, env.world_size))
    optimizer = build_optimizer(sharded, optim)
    for loaded in ParquetBatchStream(args.data, "train", 64, env.rank, env.world_size, max_batches=args.steps):
        optimizer.zero_grad()
        loss, _ = sharded(loaded.batch)
        loss.backward()
        optimizer.step()

    def test_stream() -> ParquetBatchStream:
        return ParquetBatchStream(args.data, "test", 128, env.rank, env.world_size, drop_last=False)

    trained = predict(sharded, test_stream(), env.device, env.world_size)
    config = ServingModelConfig.from_train_config(SimpleNamespace(embedding=spec, dlrm=dlrm), meta.table_sizes,
                                                  len(meta.dense_features))
    export = export_serving(
        sharded, args.out, config, dataset=args.data, source={"test": "serving_export_worker"},
        serving_topology=ServingTopology(world_size=4, compute_device="cpu"), serving_sharding="table_wise",
        chunk_rows=100,  # several chunks per shard, and uneven ones
    )
    reloaded, _ = load_serving_sharded(export.path, env.device, plan="replan", sharding="row_wise")
    collapsed = predict(reloaded, test_stream(), env.device, env.world_size)
    if env.is_main:
        torch.save({
            "probs": trained.probs, "labels": trained.labels, "collapsed_probs": collapsed.probs,
            "training_plan": str(sharded.plan), "reload_plan": str(reloaded.plan),
            "k_bytes": export.stats.total_k_bytes, "local_k_bytes": export.stats.local_k_bytes,
        }, args.preds)
    shutdown_distributed()


if __name__ == "__main__":
    main()
