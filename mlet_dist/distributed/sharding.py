"""Shard a model with TorchRec's planner and DistributedModelParallel.

The EBC sharder here (row-wise types on CPU too, mean-pooling divisor fix, bounds-checked fused
params) shards stock EBCs and, injected into the MLET sharder (distributed/sharded_mlet.py), the
k-wide tables of MLET collections. With ``owner_projection`` the MLET sharder projects on the
table's owner; without it, an MLET collection's k-wide tables are plain EBC tables for TorchRec
and its projections dense, data-parallel parameters.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder, ShardedEmbeddingBagCollection
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ModuleSharder, ParameterSharding, ShardingEnv, ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.mean_pooling import fix_mean_pooling_divisor
from mlet_dist.distributed.sharded_mlet import MLETEmbeddingBagCollectionSharder
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection

SHARDING_CHOICES = ("auto", "table_wise", "row_wise", "table_row_wise", "column_wise", "data_parallel")


class MeanSafeEBCSharder(EmbeddingBagCollectionSharder):
    """TorchRec's EBC sharder (same sharding types), with the mean-pooling divisor corrected for
    collections that mix row-wise MEAN tables with other sharding types (see mean_pooling.py)."""

    def shard(
        self,
        module: EmbeddingBagCollection,
        params: Dict[str, ParameterSharding],
        env: ShardingEnv,
        device: Optional[torch.device] = None,
        module_fqn: Optional[str] = None,
    ) -> ShardedEmbeddingBagCollection:
        sharded = super().shard(module, params, env, device, module_fqn)
        fix_mean_pooling_divisor(sharded, params)
        return sharded


class EBCSharder(MeanSafeEBCSharder):
    """Offers row-wise and table-row-wise on CPU too: TorchRec lists them for CUDA only, but they
    run on CPU/gloo (checked against one process in tests/)."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return [
            ShardingType.DATA_PARALLEL.value,
            ShardingType.TABLE_WISE.value,
            ShardingType.COLUMN_WISE.value,
            ShardingType.TABLE_COLUMN_WISE.value,
            ShardingType.ROW_WISE.value,
            ShardingType.TABLE_ROW_WISE.value,
        ]


@dataclass
class ShardingConfig:
    """``owner_projection``: MLET tables project on the owning rank before the all-to-all
    (d-wide traffic); False keeps the projections as dense DDP parameters after it (k-wide)."""

    sharding: str = "auto"
    owner_projection: bool = True

    def __post_init__(self) -> None:
        if self.sharding not in SHARDING_CHOICES:
            raise ValueError(f"--sharding must be one of {', '.join(SHARDING_CHOICES)}; got {self.sharding!r}")


def default_sharders(config: ShardingConfig) -> List[ModuleSharder[nn.Module]]:
    """One EBC sharder for stock EBCs and, injected, for the k-wide tables of MLET collections."""
    ebc_sharder = EBCSharder(fused_params=bounds_checked())
    sharders: List[ModuleSharder[nn.Module]] = [ebc_sharder]
    if config.owner_projection:
        sharders.insert(0, MLETEmbeddingBagCollectionSharder(ebc_sharder))
    return sharders


def mark_projection_after_comm(model: nn.Module, config: ShardingConfig) -> None:
    """--projection-after-comm shards MLET collections as plain EBCs on purpose: no warning."""
    for module in model.modules():
        if isinstance(module, MLETEmbeddingBagCollection):
            module.projection_after_comm = not config.owner_projection


def bounds_checked() -> Dict[str, object]:
    """fbgemm's TBE checks every id against its table on the device and, in FATAL mode, raises
    (its default, WARNING, silently maps a bad id to row 0). No host sync: the per-step Python
    checks of the module path are opt-in (--check-inputs)."""
    return {"bounds_check_mode": BoundsCheckMode.FATAL}


def embedding_collections(model: nn.Module) -> List[EmbeddingBagCollection]:
    return [m for m in model.modules() if isinstance(m, EmbeddingBagCollection)]


def constraints_for_tables(tables: Iterable[str], sharding: str) -> Optional[Dict[str, ParameterConstraints]]:
    """Force one sharding type on every named table (None for "auto"); data-parallel needs the
    dense kernel, every other type runs fused."""
    if sharding == "auto":
        return None
    kernels = (
        [EmbeddingComputeKernel.DENSE.value] if sharding == "data_parallel" else [EmbeddingComputeKernel.FUSED.value]
    )
    return {name: ParameterConstraints(sharding_types=[sharding], compute_kernels=kernels) for name in tables}


def constraints_for(model: nn.Module, sharding: str) -> Optional[Dict[str, ParameterConstraints]]:
    """``constraints_for_tables`` over every table of the model's collections."""
    return constraints_for_tables(
        (cfg.name for ebc in embedding_collections(model) for cfg in ebc.embedding_bag_configs()), sharding
    )


class FixedBucketDataParallelWrapper(DefaultDataParallelWrapper):
    """TorchRec's DDP wrapper with one gradient-bucket layout for the job's life, and no DDP at
    world size 1.

    DDP builds its buckets in reverse parameter order and rebuilds them after a process's first
    backward in gradient-ready order. A job resumed from a checkpoint runs its first step with the
    initial layout where the uninterrupted job had the rebuilt one, and with 3+ ranks gloo's ring
    all-reduce then adds the ranks' gradients in another order for elements whose bucket offset
    moved: the resume differed at ~6e-8 (seen at 4 and 16 ranks; a sum of two is commutative, so 2
    ranks never showed it). Here the one rebuild DDP allows happens at construction, in parameter
    order (the reducer's own join path: push every parameter as "ready", rebuild), so every
    process of every attempt uses the same layout from its first step on. Without TorchRec's
    static_graph=True: a static graph's first iteration (the resumed process's first step) takes
    another reduction path, and with the early rebuild a 16-rank resume diverged (0.68 in a table
    after 3 steps), while static_graph=False resumed bit-identical at 4 and 16 ranks.

    One process has no peer to average gradients with, yet DDP's forward wrapper and reducer
    cost ~0.5 ms of a ~15 ms batch-128 step (benchmarks/profiles/step_profile_b128_breakdown.md),
    so at world size 1 the dense part stays unwrapped (``single_process_ddp`` keeps DDP, for
    comparisons). DMP strips DDP's ``module.`` prefix from its state dict and parameter names, so
    checkpoints and optimizer state read the same either way (tests/test_world_size_one.py)."""

    def __init__(self, single_process_ddp: bool = False, **kwargs: object) -> None:
        super().__init__(**{"static_graph": False, **kwargs})
        self._single_process_ddp = single_process_ddp

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        if env.world_size == 1 and not self._single_process_ddp:
            dmp._dmp_wrapped_module.to(device)  # the one thing DDP's wrap does besides wrapping
            return
        super().wrap(dmp, env, device)
        ddp = dmp._dmp_wrapped_module
        if isinstance(ddp, DistributedDataParallel):
            ddp.reducer._push_all_rebuilt_params()
            if not ddp.reducer._rebuild_buckets():
                raise RuntimeError(
                    "DDP refused the bucket rebuild at construction (torch changed?): "
                    "resumes would no longer be bit-identical"
                )


def shard_model(
    model: nn.Module,
    env: DistEnv,
    config: ShardingConfig,
    constraints: Optional[Dict[str, ParameterConstraints]] = None,
    plan: Optional[ShardingPlan] = None,
    single_process_ddp: bool = False,
) -> DistributedModelParallel:
    """Plan on the live process group (or take ``plan``, e.g. from a file) and wrap in DMP;
    ``model`` may live on the meta device. ``constraints`` (per table) override the single
    ``config.sharding`` choice. ``single_process_ddp`` wraps the dense part in DDP at world size 1
    too (only to compare with; see FixedBucketDataParallelWrapper)."""
    sharders = default_sharders(config)
    mark_projection_after_comm(model, config)
    if plan is None:
        plan = collective_plan(model, env, config, sharders, constraints)
    return DistributedModelParallel(
        module=model,
        device=env.device,
        plan=plan,
        sharders=sharders,
        data_parallel_wrapper=FixedBucketDataParallelWrapper(single_process_ddp=single_process_ddp),
    )


def collective_plan(
    model: nn.Module,
    env: DistEnv,
    config: ShardingConfig,
    sharders: List[ModuleSharder[nn.Module]],
    constraints: Optional[Dict[str, ParameterConstraints]],
) -> ShardingPlan:
    """TorchRec's planner on the live process group: every rank gets rank 0's plan."""
    import torch.distributed as dist

    topology = Topology(
        world_size=env.world_size,
        local_world_size=env.local_world_size,
        compute_device=env.device.type,
    )
    if constraints is None:
        constraints = constraints_for(model, config.sharding)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    pg = dist.GroupMember.WORLD
    assert pg is not None, "init_distributed() first"
    return planner.collective_plan(model, sharders, pg)
