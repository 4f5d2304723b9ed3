"""One builder for the trainable ranking model, shared by training, offline planning and the
collapse, so a plan made by mlet-plan names the same modules and tables that mlet-train shards
and mlet-collapse loads."""

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Union

import torch
from torchrec.models.dlrm import DLRMTrain
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.models.dcn import DCNConfig, build_dcnv2
from mlet_dist.models.dlrm import DLRMConfig, build_dlrm
from mlet_dist.models.embedding_tables import EmbeddingSpec, build_embedding_collection
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection


def build_ranking_model(
    arch: str,
    collection: Union[EmbeddingBagCollection, MLETEmbeddingBagCollection],
    dlrm: DLRMConfig,
    dcn: Optional[DCNConfig] = None,
    device: Optional[torch.device] = None,
) -> DLRMTrain:
    """DLRMTrain (BCE loss head) over DLRM or DCN-v2."""
    if arch == "dcnv2":
        return DLRMTrain(build_dcnv2(collection, dlrm, dcn or DCNConfig(), dense_device=device))
    if arch != "dlrm":
        raise ValueError(f"--arch must be dlrm or dcnv2, got {arch!r}")
    return DLRMTrain(build_dlrm(collection, dlrm, dense_device=device))


@dataclass
class ModelConfig:
    """The model part of a run's config tree: everything that decides the parameters."""

    arch: str = "dlrm"  # dlrm | dcnv2 (both take dlrm's bottom/top MLP sizes)
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)
    dcn: DCNConfig = field(default_factory=DCNConfig)


def model_factory(cfg: ModelConfig, table_sizes: Dict[str, int], num_dense: int,
                  pooling: Optional[Dict[str, str]] = None) -> Callable[[torch.device], DLRMTrain]:
    """``build(device)`` for the dataset's tables (``device`` "meta" before sharding); ``pooling``:
    the dataset's per-feature pooling (``DatasetMeta.pooling``)."""
    dlrm = dataclasses.replace(cfg.dlrm, dense_in_features=num_dense)

    def build(device: torch.device) -> DLRMTrain:
        collection = build_embedding_collection(table_sizes, cfg.embedding, device=device, pooling=pooling)
        return build_ranking_model(cfg.arch, collection, dlrm, cfg.dcn, device)

    return build
