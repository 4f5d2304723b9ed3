"""Ranking models that take either a stock EBC or an MLET EBC."""

from mlet_dist.models.dlrm import DLRMConfig, build_dlrm
from mlet_dist.models.embedding_tables import EmbeddingSpec, build_embedding_collection

__all__ = ["DLRMConfig", "EmbeddingSpec", "build_dlrm", "build_embedding_collection"]
