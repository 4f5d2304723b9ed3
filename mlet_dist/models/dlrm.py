"""DLRM over either collection, in the paper's Criteo shape by default.

TorchRec's DLRM is reused as is: it only needs ``embedding_bag_configs()`` to report the d-wide
view, which MLETEmbeddingBagCollection does.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Union

import torch
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection


@dataclass
class DLRMConfig:
    """Bottom MLP 13-512-256-64-d and top MLP 512-256-1 (d is appended from the tables)."""

    dense_in_features: int = 13
    bottom_mlp: List[int] = field(default_factory=lambda: [512, 256, 64])
    top_mlp: List[int] = field(default_factory=lambda: [512, 256, 1])

    def __post_init__(self) -> None:
        if not self.top_mlp or self.top_mlp[-1] != 1:
            raise ValueError(f"top_mlp must end in 1 (one logit), got {self.top_mlp}")
        if any(width < 1 for width in [*self.bottom_mlp, *self.top_mlp]):
            raise ValueError(f"MLP layer widths must be >= 1, got bottom {self.bottom_mlp}, top {self.top_mlp}")


def build_dlrm(
    collection: Union[EmbeddingBagCollection, MLETEmbeddingBagCollection],
    config: DLRMConfig = DLRMConfig(),
    dense_device: Optional[torch.device] = None,
) -> DLRM:
    dims = {c.embedding_dim for c in collection.embedding_bag_configs()}
    if len(dims) != 1:
        raise ValueError(f"DLRM's dot interaction needs one output width for all tables, got {dims}")
    (d,) = dims
    return DLRM(
        embedding_bag_collection=collection,  # type: ignore[arg-type]
        dense_in_features=config.dense_in_features,
        dense_arch_layer_sizes=[*config.bottom_mlp, d],
        over_arch_layer_sizes=list(config.top_mlp),
        dense_device=dense_device,
    )
