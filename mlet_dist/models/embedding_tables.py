"""One switch between the MLET collection and the stock baseline, sized from a dataset's tables."""

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Union

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.modules.mlet_config import MLET_INITS, MLETTableConfig
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection


# Widest k or d accepted (k = 16 x d up to d = 1024). Wider is a typo, and TorchRec's planner
# enumerates k / 128 column-wise shards per table: -k 1e9 grew its memory with no error.
MAX_EMBEDDING_WIDTH = 16384


@dataclass
class EmbeddingSpec:
    """``mlet=False`` gives the baseline: a stock EBC at width d (``inner_dim`` unused)."""

    embedding_dim: int = 16
    inner_dim: int = 64
    mlet: bool = True
    projection_init_std: Optional[float] = None
    # --mlet-init: how T and W start (modules/mlet_config.py). matched since issue 28: under paper the
    # first rowwise-Adagrad steps move T·W by ~lr·sqrt(2k/d) per element, and MLET 64->4 at the default
    # table lr fell below baseline d=4 on 3/3 seeds (reports/small_d/README.md section 8); paper is the old default
    mlet_init: str = "matched"
    pooling: PoolingType = PoolingType.SUM
    # Per-call Python checks of ids and feature names in the MLET module (host syncs every step).
    # Training turns them off: the reader validated every id and the sharded kernels bound-check
    # on the device (distributed/sharding.py); --check-inputs turns them back on.
    validate_inputs: bool = True

    def __post_init__(self) -> None:
        for flag, width in (("--embedding-dim", self.embedding_dim), ("--inner-dim", self.inner_dim)):
            if not 1 <= width <= MAX_EMBEDDING_WIDTH:
                raise ValueError(f"{flag} must be in [1, {MAX_EMBEDDING_WIDTH}], got {width}")
        std = self.projection_init_std
        if std is not None and not (math.isfinite(std) and std > 0):
            raise ValueError(f"--projection-init-std must be a finite number > 0, got {std}")
        if self.mlet_init not in MLET_INITS:
            raise ValueError(f"--mlet-init must be one of {', '.join(MLET_INITS)}, got {self.mlet_init!r}")
        if self.mlet and self.inner_dim < self.embedding_dim:
            raise ValueError(
                f"--inner-dim k={self.inner_dim} is smaller than --embedding-dim d={self.embedding_dim}: "
                "MLET needs k >= d (the paper uses k = 4..16 x d)"
            )


def feature_poolings(
    features: Iterable[str],
    spec: EmbeddingSpec,
    pooling: Optional[Mapping[str, str]] = None,
) -> Dict[str, PoolingType]:
    """Each feature's pooling: the dataset's (meta.json ``pooling``: "sum"/"mean") where given,
    else ``spec.pooling``. The dataset decides because it knows what its bags mean (a bag of
    recent items averages, a bag of counts sums)."""
    given = dict(pooling or {})
    out: Dict[str, PoolingType] = {}
    for feature in features:
        name = given.pop(feature, None)
        if name is None:
            out[feature] = spec.pooling
        elif str(name).upper() in ("SUM", "MEAN"):
            out[feature] = PoolingType[str(name).upper()]
        else:
            raise ValueError(f"pooling of feature {feature!r} must be sum or mean, got {name!r}")
    if given:
        raise ValueError(f"pooling given for features without a table: {sorted(given)}")
    return out


def build_embedding_collection(
    table_sizes: Dict[str, int],
    spec: EmbeddingSpec,
    device: Optional[torch.device] = None,
    pooling: Optional[Mapping[str, str]] = None,
) -> Union[MLETEmbeddingBagCollection, EmbeddingBagCollection]:
    """One table per feature, named ``t_<feature>``, in the order of ``table_sizes``; ``pooling``
    (feature -> "sum"/"mean", from the dataset's meta.json) overrides ``spec.pooling`` per feature."""
    pools = feature_poolings(table_sizes, spec, pooling)
    if spec.mlet:
        return MLETEmbeddingBagCollection(
            tables=[
                MLETTableConfig(
                    name=f"t_{feature}",
                    num_embeddings=n,
                    inner_dim=spec.inner_dim,
                    embedding_dim=spec.embedding_dim,
                    feature_names=[feature],
                    pooling=pools[feature],
                    projection_init_std=spec.projection_init_std,
                    init=spec.mlet_init,
                )
                for feature, n in table_sizes.items()
            ],
            device=device,
            validate_inputs=spec.validate_inputs,
        )
    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t_{feature}",
                num_embeddings=n,
                embedding_dim=spec.embedding_dim,
                feature_names=[feature],
                pooling=pools[feature],
            )
            for feature, n in table_sizes.items()
        ],
        device=device,
    )
