"""Host copies of a sharded state dict, for ``dcp.async_save``.

DCP's default stager cannot copy TorchRec's ShardedTensors (it asks them for ``data_ptr``), so
the async checkpoint stages here: every local shard is copied to host memory under the same
shard metadata, plain tensors are copied, other values are deep-copied. The copy is what the
background write reads, so training may change the live weights at once.
"""

import copy
from typing import Any, Dict

import torch
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
from torch.distributed.checkpoint.staging import AsyncStager


def host_copy(value: Any) -> Any:
    if isinstance(value, ShardedTensor):
        shards = [
            Shard(s.tensor.detach().to("cpu", copy=True), copy.deepcopy(s.metadata)) for s in value.local_shards()
        ]
        meta = copy.deepcopy(value.metadata())
        for shard_meta in meta.shards_metadata:  # the copy lives on the host whatever the source device
            if shard_meta.placement is not None and shard_meta.placement.device().type != "cpu":
                shard_meta.placement._device = torch.device("cpu")
        for shard in shards:
            if shard.metadata.placement is not None:
                shard.metadata.placement._device = torch.device("cpu")
        return ShardedTensor._init_from_local_shards_and_global_metadata(
            shards, sharded_tensor_metadata=meta, process_group=value._process_group
        )
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(host_copy(v) for v in value)
    return copy.deepcopy(value)


class HostCopyStager(AsyncStager):
    """``dcp.async_save``'s stager: a synchronous host copy (``host_copy``)."""

    _synchronize_after_execute = False

    def stage(self, state_dict: Dict[str, Any]) -> Dict[str, Any]:
        return host_copy(state_dict)

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        pass
