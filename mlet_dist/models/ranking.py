"""One builder for the trainable ranking model, shared by training and offline planning, so a plan
made by mlet-plan names the same modules and tables that mlet-train shards."""

from typing import Optional, Union

import torch
from torchrec.models.dlrm import DLRMTrain
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.models.dcn import DCNConfig, build_dcnv2
from mlet_dist.models.dlrm import DLRMConfig, build_dlrm
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
