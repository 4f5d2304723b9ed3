"""Per-table configuration of an MLET embedding: a wide n×k table followed by a k×d projection."""

from dataclasses import dataclass, field
from math import sqrt
from typing import Iterable, List, Optional

from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType


@dataclass
class MLETTableConfig:
    """One MLET table: rows ``num_embeddings`` (n), inner width ``inner_dim`` (k), output width
    ``embedding_dim`` (d).

    The output view (``output_config``) is what the rest of the model sees, so that MLET is a
    drop-in replacement for a stock table of width d; ``inner_config`` is the wide table that
    TorchRec stores and shards.
    """

    name: str
    num_embeddings: int
    inner_dim: int
    embedding_dim: int
    feature_names: List[str] = field(default_factory=list)
    pooling: PoolingType = PoolingType.SUM
    projection_init_std: Optional[float] = None

    def __post_init__(self) -> None:
        if not self.feature_names:
            self.feature_names = [self.name]
        if self.num_embeddings <= 0:
            raise ValueError(f"table {self.name!r}: num_embeddings must be > 0, got {self.num_embeddings}")
        if self.embedding_dim <= 0:
            raise ValueError(f"table {self.name!r}: embedding_dim (d) must be > 0, got {self.embedding_dim}")
        if self.inner_dim < self.embedding_dim:
            raise ValueError(
                f"table {self.name!r}: inner_dim k={self.inner_dim} is smaller than embedding_dim "
                f"d={self.embedding_dim}; MLET needs k >= d (the paper uses k = 4..16 x d). "
                "Raise inner_dim or lower embedding_dim."
            )
        if self.pooling not in (PoolingType.SUM, PoolingType.MEAN):
            raise ValueError(f"table {self.name!r}: pooling must be SUM or MEAN, got {self.pooling}")
        if self.projection_init_std is not None and self.projection_init_std <= 0:
            raise ValueError(f"table {self.name!r}: projection_init_std must be > 0")

    @property
    def init_std(self) -> float:
        """Projection init std; default sqrt(2/(k+d)) is DLRM's Linear init, which the authors'
        DLRM-based MLET code uses for the projection layer."""
        if self.projection_init_std is not None:
            return self.projection_init_std
        return sqrt(2.0 / (self.inner_dim + self.embedding_dim))

    def inner_config(self) -> EmbeddingBagConfig:
        """The wide n×k table; TorchRec's default init is uniform in ±sqrt(1/n), as in the paper."""
        return EmbeddingBagConfig(
            name=self.name,
            num_embeddings=self.num_embeddings,
            embedding_dim=self.inner_dim,
            feature_names=list(self.feature_names),
            pooling=self.pooling,
        )

    def output_config(self) -> EmbeddingBagConfig:
        """The d-wide view: what the collapsed (serving) table looks like."""
        return EmbeddingBagConfig(
            name=self.name,
            num_embeddings=self.num_embeddings,
            embedding_dim=self.embedding_dim,
            feature_names=list(self.feature_names),
            pooling=self.pooling,
        )


def check_weighted_pooling(tables: Iterable["MLETTableConfig"], is_weighted: bool) -> None:
    """Per-sample weights only with SUM pooling, in every path.

    A weighted MEAN has no single definition here: TorchRec's unsharded EBC (torch's
    EmbeddingBag) raises NotImplementedError for per-sample weights with MEAN, while the sharded
    row-wise path divides the weighted sum by the sum of the weights. So the collection refuses
    the combination, sharded or not, instead of giving results that depend on where it runs.
    """
    if not is_weighted:
        return
    mean = [t.name for t in tables if t.pooling == PoolingType.MEAN]
    if mean:
        raise ValueError(
            f"tables {mean} use MEAN pooling in a weighted collection (is_weighted=True): weighted "
            "pooling is supported with SUM only. Use SUM, or fold the normalisation into the weights"
        )
