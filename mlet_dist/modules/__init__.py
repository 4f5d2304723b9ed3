"""Math of MLET, independent of torch.distributed."""

from mlet_dist.modules.mlet_config import MLETTableConfig
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection, MLETProjection

__all__ = [
    "MLETEmbeddingBagCollection",
    "MLETProjection",
    "MLETTableConfig",
]
