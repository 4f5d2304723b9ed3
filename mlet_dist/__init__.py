"""mlet_dist: distributed Multi-Layer Embedding Training (MLET) for recommendation models."""

from mlet_dist.modules import (
    MLETEmbeddingBagCollection,
    MLETTableConfig,
    collapse,
    collapse_model,
    collapse_table,
)

__all__ = [
    "MLETEmbeddingBagCollection",
    "MLETTableConfig",
    "collapse",
    "collapse_model",
    "collapse_table",
]
