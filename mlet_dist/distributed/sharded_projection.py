"""The k×d projection of one table, stored where its table shards live.

- table-wise / column-wise ("partitioned"): each rank holds the rows of W that match the columns
  of T it owns (all k rows for a table-wise owner, a slice per column shard). Gradients and
  optimizer state stay there; nothing to synchronise.
- row-wise / table-row-wise / data-parallel ("replicated"): every rank of the table's shard
  group holds all of W. Row-wise ranks each see part of every bag, so their W gradients are
  partial sums and are all-reduced (summed) in the group; data-parallel ranks see different
  samples, so their gradients are averaged, as DDP would. The reduction is a hook on each
  backward's gradient (before it is accumulated into ``.grad``), so gradient accumulation over
  micro-batches gives the sum of the reduced micro-batch gradients.

The state dict shows one ``weight`` of shape (k, d): a ShardedTensor when partitioned, a plain
tensor when replicated, so DCP and ``load_state_dict`` move it like any TorchRec table.
"""

from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import (
    Shard,
    ShardedTensor,
    ShardedTensorMetadata,
    TensorProperties,
)


class ShardedProjection(nn.Module):
    def __init__(
        self,
        inner_dim: int,
        out_dim: int,
        init_std: float,
        device: torch.device,
        rank: int,
        global_shards: Optional[List[ShardMetadata]],
        group: Optional[dist.ProcessGroup] = None,
        average_grads: bool = False,
        source: Optional[torch.Tensor] = None,
    ) -> None:
        """``global_shards`` (row slices of W with placements) for a partitioned projection,
        None for a replicated one; ``group`` is the shard group of a replicated projection."""
        super().__init__()
        self.inner_dim, self.out_dim = inner_dim, out_dim
        self.global_shards = global_shards
        self.local_row_offsets: List[int] = []
        local: List[nn.Parameter] = []
        if global_shards is None:
            self.local_row_offsets = [0]
            local.append(nn.Parameter(torch.empty(inner_dim, out_dim, device=device)))
        else:
            for meta in global_shards:
                if meta.placement is not None and meta.placement.rank() == rank:
                    self.local_row_offsets.append(int(meta.shard_offsets[0]))
                    local.append(nn.Parameter(torch.empty(int(meta.shard_sizes[0]), out_dim, device=device)))
        # Named by row offset so that per-shard optimizer state gets a distinct key on each rank
        # (a checkpoint de-duplicates equal keys across ranks).
        self.shards = nn.ParameterDict({f"rows_{o}": p for o, p in zip(self.local_row_offsets, local)})
        self._init_weights(init_std, source)
        if global_shards is None:
            self._replicate(group, average_grads)
        self._register_state_dict_hook(ShardedProjection._state_dict_hook)
        self._register_load_state_dict_pre_hook(self._load_state_dict_pre_hook)

    @torch.no_grad()
    def _init_weights(self, init_std: float, source: Optional[torch.Tensor]) -> None:
        for offset, param in zip(self.local_row_offsets, self.shards.values()):
            if source is not None and source.device.type != "meta":
                param.copy_(source[offset : offset + param.shape[0]])
            else:
                nn.init.normal_(param, mean=0.0, std=init_std)

    def _replicate(self, group: Optional[dist.ProcessGroup], average: bool) -> None:
        """Same initial W on every rank of the group, and gradients reduced after backward."""
        (param,) = list(self.shards.values())
        group_ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
        with torch.no_grad():
            dist.broadcast(param.data, src=min(group_ranks), group=group)
        size = len(group_ranks)

        def reduce_grad(grad: torch.Tensor) -> torch.Tensor:
            # A tensor hook sees this backward's contribution before it is added to ``.grad``, so
            # under gradient accumulation each micro-batch is reduced exactly once (a
            # post-accumulate hook would reduce the already-reduced running sum again).
            reduced = grad.clone()
            dist.all_reduce(reduced, group=group)
            if average:
                reduced.div_(size)
            return reduced

        param.register_hook(reduce_grad)

    def whole_shard_name(self, row_offset: int, rows: int) -> Optional[str]:
        """The name in ``shards`` of the local shard that is exactly W rows [row_offset,
        row_offset + rows) (what ``local_slice`` returns as is), or None."""
        for offset, name in zip(self.local_row_offsets, self.shards):
            if offset == row_offset and rows == self.shards[name].shape[0]:
                return name
        return None

    def local_slice(self, row_offset: int, rows: int) -> torch.Tensor:
        """W rows [row_offset, row_offset + rows) as held on this rank: the parameter itself when
        that is the whole shard (the table-wise case), so autograd adds no slice-backward
        (a zero-filled k×d buffer per table per step) in front of its gradient."""
        whole = self.whole_shard_name(row_offset, rows)
        if whole is not None:
            return self.shards[whole]
        for offset, param in zip(self.local_row_offsets, self.shards.values()):
            if offset <= row_offset and row_offset + rows <= offset + param.shape[0]:
                return param[row_offset - offset : row_offset - offset + rows]
        raise KeyError(f"projection rows [{row_offset}, {row_offset + rows}) are not held on this rank")

    # --- state dict: one (k, d) "weight" -------------------------------------------------------
    @staticmethod
    def _state_dict_hook(module: "ShardedProjection", state_dict: Dict[str, Any], prefix: str, _: Any) -> None:
        for name in module.shards:
            state_dict.pop(f"{prefix}shards.{name}", None)
        state_dict[f"{prefix}weight"] = module.full_or_sharded_weight()

    def full_or_sharded_weight(self) -> torch.Tensor:
        params = list(self.shards.values())
        if self.global_shards is None:
            return params[0].detach()
        local = []
        for offset, param in zip(self.local_row_offsets, params):
            meta = next(m for m in self.global_shards if int(m.shard_offsets[0]) == offset)
            local.append(Shard(tensor=param.detach(), metadata=meta))
        first = params[0] if params else None
        properties = TensorProperties(dtype=first.dtype if first is not None else torch.float32)
        metadata = ShardedTensorMetadata(
            shards_metadata=list(self.global_shards),
            size=torch.Size([self.inner_dim, self.out_dim]),
            tensor_properties=properties,
        )
        return ShardedTensor._init_from_local_shards_and_global_metadata(local, metadata)

    def _load_state_dict_pre_hook(self, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
        key = f"{prefix}weight"
        if key not in state_dict:
            return
        source = state_dict.pop(key)
        with torch.no_grad():
            if isinstance(source, ShardedTensor):
                by_offset = {int(s.metadata.shard_offsets[0]): s.tensor for s in source.local_shards()}
                for offset, param in zip(self.local_row_offsets, self.shards.values()):
                    if offset not in by_offset:
                        raise ValueError(f"{key}: no local shard at row {offset} in the loaded ShardedTensor")
                    param.copy_(by_offset[offset])
            else:
                for offset, param in zip(self.local_row_offsets, self.shards.values()):
                    param.copy_(source[offset : offset + param.shape[0]])
        for name, param in self.shards.items():
            state_dict[f"{prefix}shards.{name}"] = param.detach()
