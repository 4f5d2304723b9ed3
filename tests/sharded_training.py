"""Train the equivalence model (equivalence_setup.py) sharded on spawned gloo ranks and return the
full final state (rank 0): shared by test_sharded_equivalence.py and test_pipeline_equivalence.py.

``count_bytes`` also records the float bytes that the embedding output collectives (all-to-all,
reduce-scatter) send in one forward pass.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torchrec.distributed import comm_ops
from torchrec.distributed.planner import ParameterConstraints

import equivalence_setup as setup
from mlet_dist.data.parquet_batches import LoadedBatch
from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.sharded_mlet import ShardedMLETEmbeddingBagCollection
from mlet_dist.distributed.sharding import ShardingConfig, shard_model
from mlet_dist.distributed.state import gather_full_state_dict, load_full_state_dict
from mlet_dist.log_setup import quiet_library_logs
from mlet_dist.training.loop import StepSegment
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer
from multiprocess import run_ranks

MIXED = {"t_C1": "table_wise", "t_C2": "row_wise", "t_C3": "column_wise", "t_C4": "data_parallel"}
MIXED_TWRW = {**MIXED, "t_C4": "table_row_wise"}  # the mixed plan without data-parallel
CW_SHARD_COLUMNS = 16  # column-wise tables split into width/16 shards (4 for k=64, so every rank
# holds some and the partial products really are summed across ranks)


def constraints(kinds: Dict[str, str]) -> Dict[str, ParameterConstraints]:
    return {
        table: ParameterConstraints(
            sharding_types=[kind],
            compute_kernels=["dense" if kind == "data_parallel" else "fused"],
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


@dataclass(frozen=True)
class ShardedRun:
    """What one sharded training run varies (the worker's command-line flags before)."""

    sharding: str  # a sharding type, "auto", or "mixed"/"mixed_twrw" (the MIXED plans above)
    baseline: bool = False  # the baseline EBC instead of MLET
    projection_after_comm: bool = False  # projections as dense DDP parameters after the communication
    count_bytes: bool = False
    optim: str = "sgd"  # a key of equivalence_setup.OPTIMS
    steps: int = setup.STEPS
    pipeline: Optional[str] = None  # run the steps through training/loop.py's StepSegment (None: a bare loop)


def run_sharded(sharding: str, nproc: int = 2, **options: Any) -> Dict[str, Any]:
    """Rank 0's result of one ShardedRun on ``nproc`` spawned ranks."""
    return run_ranks(train_sharded, nproc, args=(ShardedRun(sharding, **options),))[0]


def train_sharded(env: DistEnv, run: ShardedRun) -> Optional[Dict[str, Any]]:
    """One rank; rank 0 returns {state, losses_rank0, pipelined_modules, plan, shards, owner_side, bytes_sent}."""
    quiet_library_logs()
    counter = ByteCounter() if run.count_bytes else None
    mlet = not run.baseline
    o = setup.OPTIMS[run.optim]
    optim = OptimConfig(
        embedding_optimizer=o.embedding,
        embedding_lr=o.embedding_lr,
        dense_optimizer=o.dense,
        dense_lr=o.dense_lr,
        eps=o.eps,
        cpu_table_update=o.cpu_table_update,
    )
    model = setup.build_model(torch.device("meta"), mlet)
    attach_fused_embedding_optimizer(model, optim, env.device.type)
    mixed = {"mixed": MIXED, "mixed_twrw": MIXED_TWRW}
    config = ShardingConfig(
        "auto" if run.sharding in mixed else run.sharding, owner_projection=not run.projection_after_comm
    )
    tables = [f"t_{f}" for f in setup.TABLE_SIZES]
    kinds = mixed.get(run.sharding, {t: run.sharding for t in tables})
    sharded = shard_model(model, env, config, constraints(kinds) if run.sharding != "auto" else None)
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
    if run.pipeline is None:
        for step in range(run.steps):
            optimizer.zero_grad()
            loss, _ = sharded(setup.rank_batch(step, env.rank, env.world_size))
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
    else:
        batches = (
            LoadedBatch(setup.rank_batch(step, env.rank, env.world_size), setup.LOCAL_BATCH)
            for step in range(run.steps)
        )
        segment = StepSegment(sharded, optimizer, batches, env.device, run.pipeline)
        losses = [float(loss) for loss in segment]
        pipelined_modules = segment.pipelined_modules
    state = gather_full_state_dict(sharded)
    total_bytes = torch.tensor(bytes_sent or [0])
    dist.all_reduce(total_bytes)
    owner_side = any(isinstance(m, ShardedMLETEmbeddingBagCollection) for m in sharded.modules())
    # fbgemm's loop (the counter kernel) keeps prev_iter beside each table's momentum1
    fused_states = [name for states in sharded.fused_optimizer.state_dict()["state"].values() for name in states]
    shards = {  # table -> [sharding type, number of shards, ranks holding them]
        table: [
            ps.sharding_type,
            len(ps.sharding_spec.shards) if ps.sharding_spec is not None else 0,
            sorted({s.placement.rank() for s in ps.sharding_spec.shards}) if ps.sharding_spec is not None else [],
        ]
        for module_plan in sharded.plan.plan.values()
        for table, ps in module_plan.items()
    }
    if not env.is_main:
        return None
    return {
        "state": state,
        "losses_rank0": losses,
        "pipelined_modules": pipelined_modules if run.pipeline else None,
        "plan": str(sharded.plan),
        "shards": shards,
        "owner_side": owner_side,
        "bytes_sent": int(total_bytes.item()),
        "momentum1_states": sum(name.endswith(".momentum1") for name in fused_states),  # this rank's
        "loop_states": sum(name.endswith(".prev_iter") for name in fused_states),
    }
