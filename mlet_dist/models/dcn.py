"""DCN-v2 (Wang et al., arXiv 2008.13535) over either collection: the second model of the study.

Stacked structure, as TorchRec's ``DLRM_DCN``: the dense features go through the bottom MLP to a
d-wide vector, which is concatenated with the F pooled d-wide sparse embeddings into
x0 = [dense ‖ e_1 ‖ ... ‖ e_F] of width N = (F + 1)·d; TorchRec's cross network
(``LowRankCrossNet``, or the full-rank ``CrossNet`` with ``low_rank=0``) computes
x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l for ``cross_layers`` layers, then the deep MLP (``top_mlp``,
ending in one logit) reads x_L. The embedding collection is reached through the same
``sparse_arch.embedding_bag_collection`` path as in DLRM, so MLET, its sharder, the planner and
``collapse_model`` treat both models alike.

Meta-device builds: TorchRec's cross networks keep their kernels in ``ParameterList``s without
``reset_parameters``, so DistributedModelParallel could not initialise them from the meta device.
They are small (L·N·r or L·N² numbers), so the cross network is always materialised on CPU when
the rest of the model is built on ``meta``; DMP's data-parallel wrapper moves it to the compute
device with the other dense parameters (and DDP broadcasts rank 0's initial values).
"""

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from torchrec.models.dlrm import DenseArch, InteractionDCNArch, OverArch, SparseArch
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mlet_dist.models.dlrm import DLRMConfig, set_bottom_mlp_output
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection

ARCHS = ("dlrm", "dcnv2")


@dataclass
class DCNConfig:
    """``low_rank`` r > 0: LowRankCrossNet (W_l = U_l V_l, U: N×r); 0: full-rank CrossNet (N×N)."""

    cross_layers: int = 3
    low_rank: int = 64

    def __post_init__(self) -> None:
        if self.cross_layers < 1:
            raise ValueError(f"--dcn-layers must be >= 1, got {self.cross_layers}")
        if self.low_rank < 0:
            raise ValueError(f"--dcn-low-rank must be >= 0 (0 = full-rank CrossNet), got {self.low_rank}")


def build_crossnet(in_features: int, config: DCNConfig, device: Optional[torch.device] = None) -> nn.Module:
    """TorchRec's cross network of width ``in_features``, initialised on ``device`` (CPU for meta)."""
    if device is not None and device.type == "meta":
        device = torch.device("cpu")
    with torch.device(device or torch.device("cpu")):
        if config.low_rank == 0:
            return CrossNet(in_features=in_features, num_layers=config.cross_layers)
        return LowRankCrossNet(in_features=in_features, num_layers=config.cross_layers, low_rank=config.low_rank)


class DCNv2(nn.Module):
    """Same forward contract as TorchRec's DLRM (dense, KJT -> logits [B, 1]); wrap in DLRMTrain."""

    def __init__(
        self,
        embedding_bag_collection: Union[EmbeddingBagCollection, MLETEmbeddingBagCollection],
        dense_in_features: int,
        dense_arch_layer_sizes: list,
        over_arch_layer_sizes: list,
        dcn: DCNConfig = DCNConfig(),
        dense_device: Optional[torch.device] = None,
        bottom_mlp_output: str = "linear",
    ) -> None:
        super().__init__()
        dims = {c.embedding_dim for c in embedding_bag_collection.embedding_bag_configs()}
        if len(dims) != 1:
            raise ValueError(f"DCN-v2 concatenates the tables: they need one output width, got {dims}")
        (d,) = dims
        if dense_arch_layer_sizes[-1] != d:
            raise ValueError(f"the bottom MLP must end in d={d}, got {dense_arch_layer_sizes}")
        self.sparse_arch = SparseArch(embedding_bag_collection)
        num_sparse = len(self.sparse_arch.sparse_feature_names)
        self.dense_arch = DenseArch(dense_in_features, list(dense_arch_layer_sizes), device=dense_device)
        set_bottom_mlp_output(self.dense_arch, bottom_mlp_output)
        width = (num_sparse + 1) * d
        self.inter_arch = InteractionDCNArch(num_sparse, build_crossnet(width, dcn, dense_device))
        self.over_arch = OverArch(width, list(over_arch_layer_sizes), device=dense_device)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        embedded_dense = self.dense_arch(dense_features)
        embedded_sparse = self.sparse_arch(sparse_features)
        crossed = self.inter_arch(dense_features=embedded_dense, sparse_features=embedded_sparse)
        return self.over_arch(crossed)


def build_dcnv2(
    collection: Union[EmbeddingBagCollection, MLETEmbeddingBagCollection],
    mlps: DLRMConfig = DLRMConfig(),
    dcn: DCNConfig = DCNConfig(),
    dense_device: Optional[torch.device] = None,
) -> DCNv2:
    """DCN-v2 with DLRM's MLP flags: ``mlps.bottom_mlp`` + [d] for the dense features,
    ``mlps.top_mlp`` (ending in 1) as the deep network after the cross layers."""
    dims = {c.embedding_dim for c in collection.embedding_bag_configs()}
    if len(dims) != 1:
        raise ValueError(f"DCN-v2 concatenates the tables: they need one output width, got {dims}")
    (d,) = dims
    return DCNv2(
        embedding_bag_collection=collection,
        dense_in_features=mlps.dense_in_features,
        dense_arch_layer_sizes=[*mlps.bottom_mlp, d],
        over_arch_layer_sizes=list(mlps.top_mlp),
        dcn=dcn,
        dense_device=dense_device,
        bottom_mlp_output=mlps.bottom_mlp_output,
    )
