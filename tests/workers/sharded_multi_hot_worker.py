"""Run under torchrun (2 gloo ranks): every multi-hot case of tests/multi_hot_setup.py in one
launch. Per case: shard with the case's hand-placed plan (shard_model, DMP, our sharders), load the reference's initial weights, train
STEPS SGD steps (tables: fused SGD; dense and projections: torch SGD) on each rank's slice of the global batch, then gather the full state.

Rank 0 writes {case id: {"state", "losses" (mean of the ranks' local losses = the global-batch
loss), "shards" (table -> [type, number of shards, ranks]), "owner_side"}} to --out.
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import equivalence_setup as setup  # noqa: E402
import multi_hot_setup as mh  # noqa: E402
from mlet_dist.distributed.env import DistEnv, init_distributed, shutdown_distributed  # noqa: E402
from mlet_dist.distributed.sharded_mlet import ShardedMLETEmbeddingBagCollection  # noqa: E402
from mlet_dist.distributed.sharding import ShardingConfig, shard_model  # noqa: E402
from mlet_dist.distributed.state import gather_full_state_dict, load_full_state_dict  # noqa: E402
from mlet_dist.log_setup import quiet_library_logs  # noqa: E402
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer  # noqa: E402


def run_case(env: DistEnv, collection: str, pooling: str, plan: str) -> Dict[str, Any]:
    mlet = collection == "mlet"
    pools = mh.POOLINGS[pooling]
    optim = OptimConfig(embedding_optimizer="sgd", embedding_lr=setup.LR, dense_optimizer="sgd", dense_lr=setup.LR)
    model = mh.build_model(torch.device("meta"), mlet, pools)
    attach_fused_embedding_optimizer(model, optim)
    sharded = shard_model(model, env, ShardingConfig(), plan=mh.sharding_plan(model, plan, env.world_size))
    load_full_state_dict(sharded, mh.initial_state(mlet, pools))
    optimizer = build_optimizer(sharded, optim)
    losses = []
    for step in range(mh.STEPS):
        optimizer.zero_grad()
        loss, _ = sharded(setup.rank_batch(step, env.rank, env.world_size))
        loss.backward()
        optimizer.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(float(total) / env.world_size)
    shards = {
        table: [ps.sharding_type,
                len(ps.sharding_spec.shards) if ps.sharding_spec is not None else 0,
                sorted({s.placement.rank() for s in ps.sharding_spec.shards}) if ps.sharding_spec is not None else []]
        for module_plan in sharded.plan.plan.values() for table, ps in module_plan.items()
    }
    return {
        "state": gather_full_state_dict(sharded),
        "losses": losses,
        "shards": shards,
        "owner_side": any(isinstance(m, ShardedMLETEmbeddingBagCollection) for m in sharded.modules()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    quiet_library_logs()
    env = init_distributed("gloo")
    results = {mh.case_id(case): run_case(env, *case) for case in mh.cases()}
    if env.is_main:
        torch.save(results, args.out)
    shutdown_distributed()


if __name__ == "__main__":
    main()
