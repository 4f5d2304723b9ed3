"""Sharder that lets TorchRec's planner and DistributedModelParallel place MLET collections."""

from typing import Dict, List, Optional

import torch
from torch import nn
from torchrec.distributed.embedding_types import BaseEmbeddingSharder
from torchrec.distributed.types import ParameterSharding, ShardingEnv

from mlet_dist.distributed.sharded_mlet import SUPPORTED, ShardedMLETEmbeddingBagCollection
from mlet_dist.distributed.sharding import EBCSharder
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection


class MLETEmbeddingBagCollectionSharder(BaseEmbeddingSharder[MLETEmbeddingBagCollection]):
    """Plans the k-wide tables like any EBC tables; the projection follows its table."""

    def shard(
        self,
        module: MLETEmbeddingBagCollection,
        params: Dict[str, ParameterSharding],
        env: ShardingEnv,
        device: Optional[torch.device] = None,
        module_fqn: Optional[str] = None,
    ) -> ShardedMLETEmbeddingBagCollection:
        return ShardedMLETEmbeddingBagCollection(
            module=module,
            table_name_to_parameter_sharding=params,
            env=env,
            fused_params=self.fused_params,
            device=device,
            qcomm_codecs_registry=self.qcomm_codecs_registry,
            module_fqn=module_fqn,
        )

    def shardable_parameters(self, module: MLETEmbeddingBagCollection) -> Dict[str, nn.Parameter]:
        return {name.split(".")[0]: p for name, p in module.wide.embedding_bags.named_parameters()}

    def sharding_types(self, compute_device_type: str) -> List[str]:
        # The plain-EBC list (row-wise kinds on CPU too), less what MLET does not support yet.
        return [t for t in EBCSharder().sharding_types(compute_device_type) if t in SUPPORTED]

    @property
    def module_type(self) -> type:
        return MLETEmbeddingBagCollection
