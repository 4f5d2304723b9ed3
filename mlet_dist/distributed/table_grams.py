"""Gram matrices TᵀT of sharded embedding tables, reduced across ranks.

The diagnostics need each table's spectrum, which TᵀT (k×k) determines; gathering whole tables
instead put every table on every rank (~17 GB per rank for Criteo Kaggle at k=128). Row-wise,
table-wise and table-row-wise shards each add their own rows' Gram into a k×k buffer that is
all-reduced. A column-wise table's Gram has cross terms between the column shards, so its rows
are assembled chunk by chunk (each rank fills in its columns, an all-reduce sums them) and only
one chunk of rows is ever resident. Replicated (data-parallel) tables are whole on every rank.
"""

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

CHUNK_ROWS = 65536


def _local_gram(t: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    g = torch.zeros(t.shape[1], t.shape[1], dtype=torch.float64)
    for start in range(0, t.shape[0], chunk_rows):
        block = t[start : start + chunk_rows].detach().to("cpu", torch.float64)
        g += block.T @ block
    return g


def _column_split(t: ShardedTensor) -> bool:
    cols = t.size(1)
    return any(m.shard_offsets[1] != 0 or m.shard_sizes[1] != cols for m in t.metadata().shards_metadata)


def _sharded_gram(t: ShardedTensor, chunk_rows: int, device: torch.device) -> torch.Tensor:
    rows, cols = t.size()
    if not _column_split(t):
        g = torch.zeros(cols, cols, dtype=torch.float64)
        for shard in t.local_shards():
            g += _local_gram(shard.tensor, chunk_rows)
        g = g.to(device)
        dist.all_reduce(g)
        return g.cpu()
    g = torch.zeros(cols, cols, dtype=torch.float64)
    for r0 in range(0, rows, chunk_rows):
        r1 = min(rows, r0 + chunk_rows)
        block = torch.zeros(r1 - r0, cols, dtype=torch.float64, device=device)
        for shard in t.local_shards():
            (ro, co), (rs, cs) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            a, b = max(r0, ro), min(r1, ro + rs)
            if a < b:
                block[a - r0 : b - r0, co : co + cs] = shard.tensor[a - ro : b - ro].to(device, torch.float64)
        dist.all_reduce(block)
        block = block.cpu()
        g += block.T @ block
    return g


@torch.no_grad()
def table_grams(
    model: nn.Module, keep: Callable[[str], bool], device: Optional[torch.device] = None, chunk_rows: int = CHUNK_ROWS
) -> Dict[str, Tuple[torch.Tensor, int]]:
    """{state-dict key: (TᵀT float64 on CPU, rows)} for every key ``keep`` accepts; collective,
    the same on every rank (every rank must pass the same ``keep``)."""
    device = device or torch.device("cpu")
    grams: Dict[str, Tuple[torch.Tensor, int]] = {}
    state = model.state_dict()
    for name in sorted(state):  # one order on every rank: the all-reduces pair up
        if not keep(name):
            continue
        t = state[name]
        if isinstance(t, ShardedTensor):
            grams[name] = (_sharded_gram(t, chunk_rows, device), int(t.size(0)))
        else:
            grams[name] = (_local_gram(t, chunk_rows), int(t.shape[0]))
    return grams
