"""Collapse a trained, sharded MLET model and shard the result as a stock TorchRec model.

Interim path: the trained tables are gathered to every rank, collapsed with
``mlet_dist.modules.collapse_model`` and re-sharded by the planner at width d. This needs the
whole model in each host's memory; the owner-side distributed collapse replaces it.
"""

from typing import Callable

import torch
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel

from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.sharding import ShardingConfig, shard_model
from mlet_dist.distributed.state import gather_full_state_dict, load_full_state_dict
from mlet_dist.modules.collapse import collapse_model


def collapse_sharded(
    trained: nn.Module,
    build_model: Callable[[torch.device], nn.Module],
    env: DistEnv,
    sharding: ShardingConfig,
) -> DistributedModelParallel:
    """``build_model(device)`` must build the same (MLET) model as was trained; the d-wide
    result is planned with the same sharding choice as training."""
    full = gather_full_state_dict(trained)
    mlet = build_model(torch.device("cpu"))
    mlet.load_state_dict(full)
    collapsed = collapse_model(mlet, inplace=True)
    collapsed_state = collapsed.state_dict()
    meta = collapse_model(build_model(torch.device("meta")), inplace=True)
    sharded = shard_model(meta, env, sharding)
    load_full_state_dict(sharded, collapsed_state)
    return sharded
