"""A TorchRec user's training script as a function for spawned gloo ranks (shared by
test_torchrec_library.py and test_projection_after_comm_quiet.py): torchrec.models.dlrm.DLRM over
an MLET collection built from EmbeddingBagConfigs, sharded by DistributedModelParallel, trained
with TorchRec's own optimizer pattern (fused in-backward tables + a keyed dense optimizer).

    which="mlet"        DMP(sharders=mlet_dist.sharders())
    which="torchrec"    DMP with TorchRec's default sharders (what a user gets without ours)
    which="after-comm"  mlet-train --projection-after-comm's own path (sharding.shard_model)
"""

import warnings
from typing import Any, Dict, Optional

import torch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import mlet_dist
from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.sharding import ShardingConfig, shard_model

TABLES, ROWS, D, K, DENSE, BATCH, STEPS = 4, 40, 8, 32, 4, 64, 40


def batch(step: int, rank: int):
    """One id per feature; the label is whether feature f0's id is in the lower half (learnable
    only through the tables)."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    ids = torch.randint(0, ROWS, (TABLES, BATCH), generator=g)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f{i}" for i in range(TABLES)],
        values=ids.reshape(-1),
        lengths=torch.ones(TABLES * BATCH, dtype=torch.int32),
    )
    return torch.randn(BATCH, DENSE, generator=g), kjt, (ids[0] < ROWS // 2).float()


def train_torchrec_dlrm(env: DistEnv, which: str) -> Optional[Dict[str, Any]]:
    """STEPS steps on this rank's batches; rank 0 returns its losses, the sharded collection's type
    and the MLETShardingWarnings raised."""
    rank = env.rank
    torch.manual_seed(rank)

    tables = [
        EmbeddingBagConfig(name=f"t{i}", num_embeddings=ROWS, embedding_dim=D, feature_names=[f"f{i}"])
        for i in range(TABLES)
    ]
    ebc = mlet_dist.mlet_collection(tables, inner_dim=K, device=torch.device("meta"))
    model = DLRM(
        embedding_bag_collection=ebc,
        dense_in_features=DENSE,
        dense_arch_layer_sizes=[16, D],
        over_arch_layer_sizes=[16, 1],
        dense_device=torch.device("cpu"),
    )
    apply_optimizer_in_backward(torch.optim.SGD, ebc.wide.parameters(), {"lr": 0.5})
    if which == "after-comm":
        model = shard_model(model, env, ShardingConfig(owner_projection=False))
    else:
        sharders = mlet_dist.sharders() if which == "mlet" else None  # None: TorchRec's defaults
        model = DistributedModelParallel(model, device=torch.device("cpu"), sharders=sharders)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(model.named_parameters())), lambda params: torch.optim.Adam(params, lr=0.01)
    )
    optimizer = CombinedOptimizer([model.fused_optimizer, dense])

    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(STEPS):
            x, kjt, y = batch(step, rank)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, kjt).squeeze(-1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
    sparse = model.module.sparse_arch.embedding_bag_collection
    if rank != 0:
        return None
    return {
        "losses": losses,
        "collection": type(sparse).__name__,
        "mlet_warnings": [str(w.message) for w in caught if issubclass(w.category, mlet_dist.MLETShardingWarning)],
    }
