"""Ranking models that take either a stock EBC or an MLET EBC: DLRM and DCN-v2."""

from mlet_dist.models.dcn import ARCHS, DCNConfig, DCNv2, build_dcnv2
from mlet_dist.models.dlrm import DLRMConfig, build_dlrm
from mlet_dist.models.embedding_tables import EmbeddingSpec, build_embedding_collection

__all__ = [
    "ARCHS",
    "DCNConfig",
    "DCNv2",
    "DLRMConfig",
    "EmbeddingSpec",
    "build_dcnv2",
    "build_dlrm",
    "build_embedding_collection",
]
