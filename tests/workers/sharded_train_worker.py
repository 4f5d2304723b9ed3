"""Run under torchrun: train the equivalence model sharded, write the full final state (rank 0)."""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

import equivalence_setup as setup  # noqa: E402
from mlet_dist.distributed.env import init_distributed, shutdown_distributed  # noqa: E402
from mlet_dist.distributed.sharding import ShardingConfig, shard_model  # noqa: E402
from mlet_dist.distributed.state import gather_full_state_dict, load_full_state_dict  # noqa: E402
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sharding", required=True)
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    env = init_distributed("gloo")
    mlet = not args.baseline
    optim = OptimConfig(embedding_optimizer="sgd", embedding_lr=setup.LR, dense_optimizer="sgd", dense_lr=setup.LR)
    model = setup.build_model(torch.device("meta"), mlet)
    attach_fused_embedding_optimizer(model, optim)
    sharded = shard_model(model, env, ShardingConfig(args.sharding))
    load_full_state_dict(sharded, setup.initial_state(mlet))
    optimizer = build_optimizer(sharded, optim)
    losses = []
    for step in range(setup.STEPS):
        optimizer.zero_grad()
        loss, _ = sharded(setup.rank_batch(step, env.rank, env.world_size))
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    state = gather_full_state_dict(sharded)
    plan = str(sharded.plan)
    if env.is_main:
        torch.save({"state": state, "losses_rank0": losses, "plan": plan}, args.out)
    shutdown_distributed()


if __name__ == "__main__":
    main()
