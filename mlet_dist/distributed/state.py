"""Move weights between a full (single-process) state dict and a DMP-sharded model.

Used to start a sharded model from the same weights as a reference model (tests), and to gather
small entries on every rank (the k×d projections: per-epoch spectra, end-of-run diagnostics).
Collapse gathers nothing: distributed/collapse.py projects each table shard on its owner.
"""

from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torch import nn


@torch.no_grad()
def load_full_state_dict(model: nn.Module, full: Dict[str, torch.Tensor]) -> None:
    """Copy full tensors into a (possibly sharded) model, shard by shard."""
    local = model.state_dict()
    missing = sorted(set(local) - set(full))
    if missing:
        raise KeyError(f"full state dict lacks {missing[:5]}{'...' if len(missing) > 5 else ''}")
    for name, dst in local.items():
        src = full[name].to(dtype=dst.dtype)
        if isinstance(dst, ShardedTensor):
            for shard in dst.local_shards():
                index = tuple(
                    slice(offset, offset + size)
                    for offset, size in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
                )
                shard.tensor.copy_(src[index].to(shard.tensor.device))
        elif isinstance(dst, DTensor):
            raise NotImplementedError(f"{name}: DTensor state is not supported yet")
        else:
            dst.copy_(src.to(dst.device))


@torch.no_grad()
def gather_full_state_dict(model: nn.Module, keep: Optional[Callable[[str], bool]] = None) -> Dict[str, torch.Tensor]:
    """Every rank gets the full tensors (CPU). Memory: the whole model on each rank, so this is
    for models that fit one host; the sharded collapse avoids it. ``keep(name)`` limits the
    gather to some entries (e.g. only the small k×d projections); every rank must pass the same."""
    full: Dict[str, torch.Tensor] = {}
    rank = dist.get_rank()
    for name, tensor in model.state_dict().items():
        if keep is not None and not keep(name):
            continue
        if isinstance(tensor, ShardedTensor):
            out = torch.empty(tensor.size(), dtype=tensor.dtype) if rank == 0 else None
            tensor.gather(dst=0, out=out)
            if out is None:
                out = torch.empty(tensor.size(), dtype=tensor.dtype)
            dist.broadcast(out, src=0)
            full[name] = out
        else:
            full[name] = tensor.detach().cpu().clone()
    return full
