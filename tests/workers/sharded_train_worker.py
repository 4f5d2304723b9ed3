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
from mlet_dist.data.parquet_batches import LoadedBatch  # noqa: E402
from mlet_dist.distributed.env import init_distributed, shutdown_distributed  # noqa: E402
from mlet_dist.distributed.sharded_mlet import ShardedMLETEmbeddingBagCollection  # noqa: E402
from mlet_dist.distributed.sharding import ShardingConfig, shard_model  # noqa: E402
from mlet_dist.distributed.state import gather_full_state_dict, load_full_state_dict  # noqa: E402
from mlet_dist.log_setup import quiet_library_logs  # noqa: E402
from mlet_dist.training.loop import PIPELINES, StepSegment  # noqa: E402
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer  # noqa: E402

MIXED = {"t_C1": "table_wise", "t_C2": "row_wise", "t_C3": "column_wise", "t_C4": "data_parallel"}
MIXED_TWRW = {**MIXED, "t_C4": "table_row_wise"}  # the mixed plan without data-parallel
CW_SHARD_COLUMNS = 16  # column-wise tables split into width/16 shards (4 for k=64, so every rank
# holds some and the partial products really are summed across ranks)


def constraints(kinds: Dict[str, str]) -> Dict[str, ParameterConstraints]:
    return {
        table: ParameterConstraints(
            sharding_types=[kind], compute_kernels=["dense" if kind == "data_parallel" else "fused"],
            min_partition=CW_SHARD_COLUMNS if kind == "column_wise" else None,
        )
        for table, kind in kinds.items()
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
    parser.add_argument("--optim", choices=sorted(setup.OPTIMS), default="sgd")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=setup.STEPS)
    parser.add_argument("--pipeline", choices=PIPELINES, default=None,
                        help="run the steps through training/loop.py's StepSegment (default: a bare loop)")
    args = parser.parse_args()
    quiet_library_logs()
    counter = ByteCounter() if args.count_bytes else None
    env = init_distributed("gloo")
    mlet = not args.baseline
    o = setup.OPTIMS[args.optim]
    optim = OptimConfig(embedding_optimizer=o.embedding, embedding_lr=o.embedding_lr,
                        dense_optimizer=o.dense, dense_lr=o.dense_lr, eps=o.eps)
    model = setup.build_model(torch.device("meta"), mlet)
    attach_fused_embedding_optimizer(model, optim)
    mixed = {"mixed": MIXED, "mixed_twrw": MIXED_TWRW}
    config = ShardingConfig("auto" if args.sharding in mixed else args.sharding,
                            owner_projection=not args.projection_after_comm)
    tables = [f"t_{f}" for f in setup.TABLE_SIZES]
    kinds = mixed.get(args.sharding, {t: args.sharding for t in tables})
    sharded = shard_model(model, env, config, constraints(kinds) if args.sharding != "auto" else None)
    load_full_state_dict(sharded, setup.initial_state(mlet))
    optimizer = build_optimizer(sharded, optim)
    bytes_sent: List[int] = []
    pipelined_modules = 0
    if counter is not None:
        counter.active = True
        with torch.no_grad():
            sharded(setup.rank_batch(0, env.rank, env.world_size))
        counter.active = False
        bytes_sent.append(counter.sent)
    losses = []
    if args.pipeline is None:
        for step in range(args.steps):
            optimizer.zero_grad()
            loss, _ = sharded(setup.rank_batch(step, env.rank, env.world_size))
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
    else:
        batches = (LoadedBatch(setup.rank_batch(step, env.rank, env.world_size), setup.LOCAL_BATCH)
                   for step in range(args.steps))
        segment = StepSegment(sharded, optimizer, batches, env.device, args.pipeline)
        losses = [float(loss) for loss in segment]
        pipelined_modules = segment.pipelined_modules
    state = gather_full_state_dict(sharded)
    total_bytes = torch.tensor(bytes_sent or [0])
    dist.all_reduce(total_bytes)
    owner_side = any(isinstance(m, ShardedMLETEmbeddingBagCollection) for m in sharded.modules())
    shards = {  # table -> [sharding type, number of shards, ranks holding them]
        table: [ps.sharding_type,
                len(ps.sharding_spec.shards) if ps.sharding_spec is not None else 0,
                sorted({s.placement.rank() for s in ps.sharding_spec.shards}) if ps.sharding_spec is not None else []]
        for module_plan in sharded.plan.plan.values() for table, ps in module_plan.items()
    }
    if env.is_main:
        torch.save({"state": state, "losses_rank0": losses,
                    "pipelined_modules": pipelined_modules if args.pipeline else None, "plan": str(sharded.plan), "shards": shards,
                    "owner_side": owner_side, "bytes_sent": int(total_bytes.item())}, args.out)
    shutdown_distributed()


if __name__ == "__main__":
    main()
