"""Correct TorchRec 1.8's mean-pooling divisor for collections that mix sharding types.

fbgemm's kernels cannot mean-pool a row-wise (RW) or table-row-wise (TWRW) shard, so TorchRec
looks those tables up with SUM and divides the collected output by the bag length afterwards
(``_create_mean_pooling_divisor`` / ``_apply_mean_pooling`` in
``torchrec/distributed/embeddingbag.py``). The divisor is built over *every* feature of the
collection and reset to 1 only for RW/TWRW SUM features, so once one RW/TWRW table is MEAN, the
outputs of table-wise, column-wise and data-parallel tables (already pooled by their kernels, SUM
or MEAN) are divided by their bag length too.

The divisor only reads ``_pooling_type_to_rs_features[SUM]`` as "features to leave alone", so
listing every feature that is not an RW/TWRW MEAN feature there makes the divisor 1 for them and
leaves the bag length only where TorchRec's kernels summed instead of averaging.
"""

from collections import defaultdict
from typing import Dict, List, Mapping

from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.types import ParameterSharding, ShardingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

SUMMED_THEN_DIVIDED = {ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value}


def divided_features(
    configs: List[EmbeddingBagConfig], shardings: Mapping[str, ParameterSharding]
) -> Dict[str, List[str]]:
    """{"MEAN": features TorchRec must divide by bag length, "SUM": every other feature}.

    Raises if one feature feeds both kinds of table: the divisor is per KJT key, so it cannot be
    1 for one of the feature's tables and the bag length for the other.
    """
    divide: List[str] = []
    keep: List[str] = []
    for config in configs:
        needs_division = (
            config.pooling == PoolingType.MEAN and shardings[config.name].sharding_type in SUMMED_THEN_DIVIDED
        )
        (divide if needs_division else keep).extend(config.feature_names)
    both = sorted(set(divide) & set(keep))
    if both:
        raise ValueError(
            f"features {both} feed a row-wise/table-row-wise MEAN table and another table: TorchRec "
            "divides per feature, so one of the two outputs would be wrong. Give the MEAN table "
            "its own features, or shard it table-wise / column-wise"
        )
    return {PoolingType.MEAN.value: divide, PoolingType.SUM.value: keep}


def fix_mean_pooling_divisor(
    sharded: ShardedEmbeddingBagCollection, shardings: Mapping[str, ParameterSharding]
) -> None:
    """Make ``sharded`` divide only RW/TWRW MEAN outputs by their bag length (call after init,
    before the first forward)."""
    attr = "_pooling_type_to_rs_features"
    if not hasattr(sharded, attr) or not hasattr(sharded, "_has_mean_pooling_callback"):
        raise RuntimeError(
            f"this TorchRec's ShardedEmbeddingBagCollection has no {attr}: recheck the mean-pooling "
            "divisor fix in mlet_dist/distributed/mean_pooling.py against its source"
        )
    groups = divided_features(sharded._embedding_bag_configs, shardings)
    if not groups[PoolingType.MEAN.value]:
        return  # TorchRec registers no divisor then
    fixed: Dict[str, List[str]] = defaultdict(list)
    fixed.update(groups)
    setattr(sharded, attr, fixed)
