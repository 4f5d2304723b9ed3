"""Per-table configuration of an MLET embedding: a wide n×k table followed by a k×d projection."""

from dataclasses import dataclass, field
from math import sqrt
from typing import Iterable, List, Optional, Tuple

from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

# How T and W start (issue 20, reports/small_d/README.md):
#   paper:   T ~ U(±sqrt(1/n)) (TorchRec's default, as in the paper), W ~ N(0, 2/(k+d)): Glorot's
#            normal, which the authors' code (benghaem/dlrm_mlet, dlrm_s_pytorch.py create_linp) offers
#            as `--linp-init xavier`, not its default.
#   authors: T as in paper, W ~ N(0, 0.25²): the authors' default (`--linp-init normal`, std 0.25).
#   matched: W ~ N(0, d/k²) and T ~ U(±1/(σ_W·sqrt(k·n))): T·W starts with exactly the variance of a
#            baseline n×d table (1/(3n)), and the first rowwise-Adagrad step moves T·W by lr per element,
#            as it moves a baseline table. Under `paper` that step is lr·k·σ_W/sqrt(d) ≈ lr·sqrt(2k/d).
MLET_INITS = ("paper", "matched", "authors")
AUTHORS_PROJECTION_STD = 0.25  # dlrm_mlet's `--linp-init normal`: nn.init.normal_(W, 0, 0.25)


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
    init: str = "paper"  # MLET_INITS

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
        if self.init not in MLET_INITS:
            raise ValueError(f"table {self.name!r}: init must be one of {', '.join(MLET_INITS)}, got {self.init!r}")

    @property
    def init_std(self) -> float:
        """Projection init std. ``paper`` (the default): sqrt(2/(k+d)), Glorot's normal (the
        authors' code has it as ``--linp-init xavier``); ``authors``: 0.25, the authors' default
        (``--linp-init normal``), independent of k and d."""
        if self.projection_init_std is not None:
            return self.projection_init_std
        if self.init == "matched":  # W^T W ≈ (d/k) I: a row step of lr per element in T is lr in T·W
            return sqrt(self.embedding_dim) / self.inner_dim
        if self.init == "authors":
            return AUTHORS_PROJECTION_STD
        return sqrt(2.0 / (self.inner_dim + self.embedding_dim))

    @property
    def table_init_range(self) -> Optional[Tuple[float, float]]:
        """(min, max) of T's uniform init; None keeps TorchRec's default ±sqrt(1/n) (``paper``).
        ``matched``: var(T·W) = k·var(T)·σ_W² equals the baseline table's 1/(3n)."""
        if self.init != "matched":
            return None
        bound = 1.0 / (self.init_std * sqrt(self.inner_dim * self.num_embeddings))
        return (-bound, bound)

    def inner_config(self) -> EmbeddingBagConfig:
        """The wide n×k table; TorchRec's default init is uniform in ±sqrt(1/n), as in the paper
        (``table_init_range`` overrides it for ``init="matched"``)."""
        low, high = self.table_init_range or (None, None)
        return EmbeddingBagConfig(
            name=self.name,
            num_embeddings=self.num_embeddings,
            embedding_dim=self.inner_dim,
            feature_names=list(self.feature_names),
            pooling=self.pooling,
            weight_init_min=low,
            weight_init_max=high,
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
