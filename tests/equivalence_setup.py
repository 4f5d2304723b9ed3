"""Shared by the 2-rank workers and the single-process reference: model, data and training step.

Plain SGD and a mean loss, so that the sharded run (tables: fused EXACT_SGD; dense: DDP average)
must equal one process that sees the global batch.
"""

from typing import Dict, List, Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.models.dlrm import DLRMTrain
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection

TABLE_SIZES: Dict[str, int] = {"C1": 97, "C2": 64, "C3": 33, "C4": 120}
NUM_DENSE = 5
LOCAL_BATCH = 8
STEPS = 6
LR = 0.1
SEED = 1234
TOLERANCE = 1e-5  # max abs difference of any weight after STEPS steps (fp32)


def build_model(device: torch.device, mlet: bool = True) -> nn.Module:
    spec = EmbeddingSpec(embedding_dim=8, inner_dim=64, mlet=mlet)
    collection = build_embedding_collection(TABLE_SIZES, spec, device=device)
    config = DLRMConfig(dense_in_features=NUM_DENSE, bottom_mlp=[16], top_mlp=[16, 1])
    return DLRMTrain(build_dlrm(collection, config, dense_device=device))


def initial_state(mlet: bool = True) -> Dict[str, torch.Tensor]:
    torch.manual_seed(SEED)
    return {k: v.clone() for k, v in build_model(torch.device("cpu"), mlet).state_dict().items()}


def global_batch_rows(step: int, global_batch: int) -> Tuple[torch.Tensor, List[List[List[int]]], torch.Tensor]:
    """dense [G, NUM_DENSE], ids[feature][row] = list (0-3 ids, so empty bags occur), labels [G]."""
    g = torch.Generator().manual_seed(step)
    dense = torch.rand(global_batch, NUM_DENSE, generator=g)
    ids = [
        [torch.randint(0, n, (int(torch.randint(0, 4, (1,), generator=g)),), generator=g).tolist()
         for _ in range(global_batch)]
        for n in TABLE_SIZES.values()
    ]
    labels = torch.randint(0, 2, (global_batch,), generator=g).float()
    return dense, ids, labels


def batch_for(step: int, lo: int, hi: int, global_batch: int) -> Batch:
    dense, ids, labels = global_batch_rows(step, global_batch)
    lengths, values = [], []
    for per_feature in ids:
        rows = per_feature[lo:hi]
        lengths += [len(r) for r in rows]
        values += [v for r in rows for v in r]
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(TABLE_SIZES), values=torch.tensor(values, dtype=torch.long),
        lengths=torch.tensor(lengths, dtype=torch.long),
    )
    return Batch(dense_features=dense[lo:hi], sparse_features=kjt, labels=labels[lo:hi])


def rank_batch(step: int, rank: int, world_size: int) -> Batch:
    g = LOCAL_BATCH * world_size
    return batch_for(step, rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH, g)


def reference_run(world_size: int, mlet: bool = True) -> Tuple[Dict[str, torch.Tensor], List[float]]:
    """One process, global batch LOCAL_BATCH * world_size, SGD on every parameter."""
    model = build_model(torch.device("cpu"), mlet)
    model.load_state_dict(initial_state(mlet))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    g = LOCAL_BATCH * world_size
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        loss, _ = model(batch_for(step, 0, g, g))
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return model.state_dict(), losses
