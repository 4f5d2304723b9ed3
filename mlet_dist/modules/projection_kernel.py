"""The one MLET projection kernel: k-wide pooled slices times their tables' W, for the unsharded
collection (all of a row's features) and the sharded one (the blocks a rank owns, column-shard
slices included), so both paths compute exactly the same products in the same way."""

from typing import Sequence

import torch


def project_blocks(values: torch.Tensor, starts: Sequence[int], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``values[:, starts[i] : starts[i] + weights[i].shape[0]] @ weights[i]`` for every block,
    concatenated along dim 1. When the blocks tile ``values`` with one shape, one batched matmul
    [F, B, c] x [F, c, d] replaces F small ones (much cheaper for 26 tables)."""
    f = len(weights)
    c, d = weights[0].shape
    tiled = list(starts) == [i * c for i in range(f)] and values.shape[1] == f * c
    if tiled and len({w.shape for w in weights}) == 1:
        x = values.view(values.shape[0], f, c).transpose(0, 1)
        return torch.bmm(x, torch.stack(list(weights))).transpose(0, 1).reshape(values.shape[0], f * d)
    return torch.cat([values[:, s:s + w.shape[0]] @ w for s, w in zip(starts, weights)], dim=1)
