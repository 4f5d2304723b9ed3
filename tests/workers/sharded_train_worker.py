"""Run under torchrun: train the equivalence model sharded, write the full final state (rank 0).

--count-bytes also records the float bytes that the embedding output collectives (all-to-all,
reduce-scatter) send in one forward pass.
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torchrec.distributed import comm_ops  # noqa: E402
from torchrec.distributed.planner import ParameterConstraints  # noqa: E402

import equivalence_setup as setup  # noqa: E402
from mlet_dist.distributed.env import init_distributed, shutdown_distributed  # noqa: E402
from mlet_dist.distributed.sharded_mlet import ShardedMLETEmbeddingBagCollection  # noqa: E402
from mlet_dist.distributed.sharding import ShardingConfig, shard_model  # noqa: E402
from mlet_dist.distributed.state import gather_full_state_dict, load_full_state_dict  # noqa: E402
from mlet_dist.log_setup import quiet_library_logs  # noqa: E402
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer  # noqa: E402

MIXED = {"t_C1": "table_wise", "t_C2": "row_wise", "t_C3": "column_wise", "t_C4": "data_parallel"}


def mixed_constraints() -> Dict[str, ParameterConstraints]:
    return {
        table: ParameterConstraints(
            sharding_types=[kind], compute_kernels=["dense" if kind == "data_parallel" else "fused"]
        )
        for table, kind in MIXED.items()
    }


class ByteCounter:
    """Counts float bytes handed to TorchRec's pooled-embedding collectives."""

    def __init__(self) -> None:
        self.sent = 0
        self.active = False
        original_a2a = comm_ops.DefaultAll2AllSingle.__call__
        original_rs = dist.reduce_scatter_tensor
        original_rs_list = dist.reduce_scatter
        counter = self

        def a2a(self_, *args, **kwargs):  # type: ignore[no-untyped-def]
            input = kwargs["input_tensor"] if "input_tensor" in kwargs else args[1]
            if counter.active and input.is_floating_point():
                counter.sent += input.numel() * input.element_size()
            return original_a2a(self_, *args, **kwargs)

        def count(tensors: List[torch.Tensor]) -> None:
            if counter.active:
                counter.sent += sum(t.numel() * t.element_size() for t in tensors if t.is_floating_point())

        def rs(output, input, *args, **kwargs):  # type: ignore[no-untyped-def]
            count([input])
            return original_rs(output, input, *args, **kwargs)

        def rs_list(output, input_list, *args, **kwargs):  # type: ignore[no-untyped-def]
            count(list(input_list))
            return original_rs_list(output, input_list, *args, **kwargs)

        comm_ops.DefaultAll2AllSingle.__call__ = a2a
        dist.reduce_scatter_tensor = rs
        dist.reduce_scatter = rs_list


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sharding", required=True)
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--projection-after-comm", action="store_true")
    parser.add_argument("--count-bytes", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    quiet_library_logs()
    counter = ByteCounter() if args.count_bytes else None
    env = init_distributed("gloo")
    mlet = not args.baseline
    optim = OptimConfig(embedding_optimizer="sgd", embedding_lr=setup.LR, dense_optimizer="sgd", dense_lr=setup.LR)
    model = setup.build_model(torch.device("meta"), mlet)
    attach_fused_embedding_optimizer(model, optim)
    config = ShardingConfig("auto" if args.sharding == "mixed" else args.sharding,
                            owner_projection=not args.projection_after_comm)
    sharded = shard_model(model, env, config, mixed_constraints() if args.sharding == "mixed" else None)
    load_full_state_dict(sharded, setup.initial_state(mlet))
    optimizer = build_optimizer(sharded, optim)
    bytes_sent: List[int] = []
    if counter is not None:
        counter.active = True
        with torch.no_grad():
            sharded(setup.rank_batch(0, env.rank, env.world_size))
        counter.active = False
        bytes_sent.append(counter.sent)
    losses = []
    for step in range(setup.STEPS):
        optimizer.zero_grad()
        loss, _ = sharded(setup.rank_batch(step, env.rank, env.world_size))
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    state = gather_full_state_dict(sharded)
    total_bytes = torch.tensor(bytes_sent or [0])
    dist.all_reduce(total_bytes)
    owner_side = any(isinstance(m, ShardedMLETEmbeddingBagCollection) for m in sharded.modules())
    if env.is_main:
        torch.save({"state": state, "losses_rank0": losses, "plan": str(sharded.plan),
                    "owner_side": owner_side, "bytes_sent": int(total_bytes.item())}, args.out)
    shutdown_distributed()


if __name__ == "__main__":
    main()
