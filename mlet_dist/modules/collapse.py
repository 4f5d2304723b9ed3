"""Collapse a trained MLET collection into a stock EmbeddingBagCollection of width d.

After training, T (n×k) · W (k×d) is a plain n×d table: serving pays nothing for MLET.
"""

import copy
from typing import Optional

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection

DEFAULT_CHUNK_ROWS = 65536


@torch.no_grad()
def collapse_table(
    table: torch.Tensor,
    projection: torch.Tensor,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """T·W computed chunk by chunk into ``out``: the only extra memory is the n×d result
    (or nothing when ``out`` is given), never a second k-wide copy."""
    if table.dim() != 2 or projection.dim() != 2 or table.shape[1] != projection.shape[0]:
        raise ValueError(
            f"cannot collapse table {tuple(table.shape)} with projection {tuple(projection.shape)}"
        )
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be > 0, got {chunk_rows}")
    n, d = table.shape[0], projection.shape[1]
    if out is None:
        out = torch.empty(n, d, dtype=projection.dtype, device=projection.device)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        torch.matmul(table[start:stop], projection, out=out[start:stop])
    return out


@torch.no_grad()
def collapse(
    mlet: MLETEmbeddingBagCollection, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> EmbeddingBagCollection:
    """A stock torchrec EmbeddingBagCollection whose tables equal T·W."""
    device = mlet.device
    ebc = EmbeddingBagCollection(
        tables=mlet.embedding_bag_configs(), is_weighted=mlet.is_weighted(), device=device
    )
    for cfg in mlet.mlet_configs():
        wide = mlet.wide.embedding_bags[cfg.name].weight
        collapse_table(
            wide,
            mlet.projections[cfg.name].weight,
            chunk_rows=chunk_rows,
            out=ebc.embedding_bags[cfg.name].weight.data,
        )
    return ebc


def collapse_model(
    model: nn.Module, chunk_rows: int = DEFAULT_CHUNK_ROWS, inplace: bool = False
) -> nn.Module:
    """Replace every MLETEmbeddingBagCollection in an (unsharded) model with its collapsed EBC."""
    if isinstance(model, MLETEmbeddingBagCollection):
        return collapse(model, chunk_rows)
    target = model if inplace else copy.deepcopy(model)
    replacements = [
        (name, module)
        for name, module in target.named_modules()
        if isinstance(module, MLETEmbeddingBagCollection)
    ]
    if not replacements:
        raise ValueError("model holds no MLETEmbeddingBagCollection to collapse")
    for name, module in replacements:
        parent_name, _, attr = name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        setattr(parent, attr, collapse(module, chunk_rows))
    return target
