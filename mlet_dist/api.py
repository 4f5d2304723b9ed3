"""The library surface for TorchRec users: MLET tables built from the EmbeddingBagConfigs a model
already has, and the sharders DistributedModelParallel needs to shard them well.

    from mlet_dist import mlet_collection, sharders
    ebc = mlet_collection(tables, inner_dim=64, device=torch.device("meta"))  # tables: EmbeddingBagConfigs
    model = DLRM(ebc, dense_in_features=13, dense_arch_layer_sizes=[512, 256, d], ...)
    model = DistributedModelParallel(model, device=device, sharders=sharders())

Without ``sharders()`` DMP shards only the k-wide tables and replicates the projections (k-wide
all-to-all); the collection warns (MLETShardingWarning) on its first forward.
"""

from typing import List, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torchrec.distributed.types import ModuleSharder
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from mlet_dist.distributed.sharding import ShardingConfig, default_sharders
from mlet_dist.modules.mlet_config import MLETTableConfig
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection

InnerDim = Union[int, Mapping[str, int]]  # one k for every table, or k per table name


def mlet_tables(
    tables: Sequence[EmbeddingBagConfig], inner_dim: InnerDim, init: str = "paper"
) -> List[MLETTableConfig]:
    """The MLET twin of each table: same name, rows, features and pooling, output width d =
    its ``embedding_dim``, trained as an n×k table times a k×d projection. A config's own init
    range is refused rather than dropped: MLET's ``init`` decides how T and W start."""
    out = []
    for table in tables:
        if table.weight_init_min is not None or table.weight_init_max is not None:
            raise ValueError(
                f"table {table.name!r}: weight_init_min/max cannot carry over to an MLET table "
                "(T and W are initialised by init='paper'|'matched'|'authors'); leave them unset"
            )
        k = inner_dim[table.name] if isinstance(inner_dim, Mapping) else inner_dim
        out.append(
            MLETTableConfig(
                name=table.name,
                num_embeddings=table.num_embeddings,
                inner_dim=k,
                embedding_dim=table.embedding_dim,
                feature_names=list(table.feature_names),
                pooling=table.pooling,
                init=init,
            )
        )
    return out


def mlet_collection(
    tables: Sequence[EmbeddingBagConfig],
    inner_dim: InnerDim,
    *,
    is_weighted: bool = False,
    device: Optional[torch.device] = None,
    init: str = "paper",
    validate_inputs: bool = True,
) -> MLETEmbeddingBagCollection:
    """A drop-in for ``EmbeddingBagCollection(tables=tables, ...)``: the same d-wide outputs and
    ``embedding_bag_configs()``, each table trained k wide (``inner_dim``: int or {table: k})."""
    return MLETEmbeddingBagCollection(
        mlet_tables(tables, inner_dim, init), is_weighted=is_weighted, device=device, validate_inputs=validate_inputs
    )


def sharders(owner_projection: bool = True) -> List[ModuleSharder[nn.Module]]:
    """What to pass as ``DistributedModelParallel(sharders=...)``: the MLET sharder (projection on
    the table's owner, d-wide all-to-all) and an EBC sharder for stock collections (row-wise types
    on CPU too, FATAL bounds checks). ``owner_projection=False``: no MLET sharder, projections as
    dense parameters after a k-wide all-to-all (mlet-train --projection-after-comm); then also set
    ``projection_after_comm = True`` on the collections, which says it is on purpose."""
    return default_sharders(ShardingConfig(owner_projection=owner_projection))
