"""Shared by the 2-rank multi-hot worker and its single-process reference (issue 16): which
cases run, the model of each, the hand-placed plans, and the reference training run.

Bags come from equivalence_setup.batch_for: 0-3 ids per sample, so empty bags and bags of
2-3 ids (where SUM and MEAN differ) occur; the test checks that they do.
"""

from typing import Dict, List, Mapping, Tuple

import torch
from torch import nn
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_wise,
)
from torchrec.distributed.types import ShardingPlan
from torchrec.models.dlrm import DLRMTrain

import equivalence_setup as setup
from mlet_dist.distributed.sharding import ShardingConfig, default_sharders
from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection

K, D = 32, 8
STEPS = 5
TOLERANCE = 1e-5  # max |difference| of any loss or weight (fp32)
FEATURES = list(setup.TABLE_SIZES)
COLLECTION = "model.sparse_arch.embedding_bag_collection"
MIXED_PLAN = {"t_C1": "table_wise", "t_C2": "row_wise", "t_C3": "column_wise", "t_C4": "data_parallel"}
PLANS: Dict[str, Dict[str, str]] = {
    **{kind: {f"t_{f}": kind for f in FEATURES} for kind in ("table_wise", "row_wise", "column_wise")},
    "mixed": MIXED_PLAN,
}
# Per-feature pooling as a format-v2 dataset's meta.json gives it; on the mixed plan: TW, RW and
# DP MEAN tables next to a CW SUM table.
PER_FEATURE = {"C1": "mean", "C2": "mean", "C3": "sum", "C4": "mean"}
POOLINGS: Dict[str, Dict[str, str]] = {
    "sum": {f: "sum" for f in FEATURES},
    "mean": {f: "mean" for f in FEATURES},
    "per_feature": PER_FEATURE,
}


def cases() -> List[Tuple[str, str, str]]:
    """(collection, pooling, plan): both collections, sum and mean on every plan, and the
    per-feature pooling on the mixed plan."""
    out = [(c, p, plan) for c in ("mlet", "baseline") for p in ("sum", "mean") for plan in PLANS]
    return out + [(c, "per_feature", "mixed") for c in ("mlet", "baseline")]


def case_id(case: Tuple[str, str, str]) -> str:
    return "-".join(case)


def build_model(device: torch.device, mlet: bool, pooling: Mapping[str, str]) -> nn.Module:
    spec = EmbeddingSpec(embedding_dim=D, inner_dim=K, mlet=mlet)
    collection = build_embedding_collection(setup.TABLE_SIZES, spec, device=device, pooling=pooling)
    config = DLRMConfig(dense_in_features=setup.NUM_DENSE, bottom_mlp=[16], top_mlp=[16, 1])
    return DLRMTrain(build_dlrm(collection, config, dense_device=device))


def initial_state(mlet: bool, pooling: Mapping[str, str]) -> Dict[str, torch.Tensor]:
    torch.manual_seed(setup.SEED)
    return {k: v.clone() for k, v in build_model(torch.device("cpu"), mlet, pooling).state_dict().items()}


def sharding_plan(model: nn.Module, plan: str, world_size: int) -> ShardingPlan:
    """The named plan, placed by hand (no planner): table-wise tables alternate between the
    ranks, column-wise tables are split into one column shard per rank."""
    collection = model.get_submodule(COLLECTION)
    sharder = next(s for s in default_sharders(ShardingConfig()) if isinstance(collection, s.module_type))
    ranks = list(range(world_size))
    generators = {
        "table_wise": lambda i: table_wise(rank=i % world_size),
        "row_wise": lambda i: row_wise(),
        "column_wise": lambda i: column_wise(ranks=ranks),
        "data_parallel": lambda i: data_parallel(),
    }
    per_table = {table: generators[kind](i) for i, (table, kind) in enumerate(PLANS[plan].items())}
    module_plan = construct_module_sharding_plan(
        collection,
        per_table,
        sharder=sharder,
        local_size=world_size,
        world_size=world_size,
        device_type="cpu",
    )
    return ShardingPlan(plan={COLLECTION: module_plan})


def reference_run(
    mlet: bool, pooling: Mapping[str, str], world_size: int, steps: int = STEPS
) -> Tuple[Dict[str, torch.Tensor], List[float]]:
    """One process, SGD on every parameter, the global batch of ``world_size`` ranks."""
    model = build_model(torch.device("cpu"), mlet, pooling)
    model.load_state_dict(initial_state(mlet, pooling))
    optimizer = torch.optim.SGD(model.parameters(), lr=setup.LR)
    g = setup.LOCAL_BATCH * world_size
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss, _ = model(setup.batch_for(step, 0, g, g))
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return model.state_dict(), losses


def bag_lengths(steps: int = STEPS, world_size: int = 2) -> Dict[int, int]:
    """How many bags of each length the run sees (the test checks empty and multi-id bags occur)."""
    g = setup.LOCAL_BATCH * world_size
    counts: Dict[int, int] = {}
    for step in range(steps):
        for n in setup.batch_for(step, 0, g, g).sparse_features.lengths().tolist():
            counts[n] = counts.get(n, 0) + 1
    return counts
