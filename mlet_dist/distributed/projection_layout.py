"""Where each table's k-wide slice sits in a TorchRec lookup's output, and the d-wide twin of a
sharding plan, so that the output dist can be built for d-wide vectors.

TorchRec concatenates a lookup's pooled outputs per grouped config, per table, per feature, each
``local_cols`` wide. Column-wise shards of a table hold columns [c0, c0 + cols) of T and so pair
with rows [c0, c0 + cols) of W; every other sharding type holds all k columns.
"""

import copy
import dataclasses
from dataclasses import dataclass
from typing import Dict, List

import torch
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.embedding_sharding import EmbeddingShardingInfo
from torchrec.distributed.embedding_types import GroupedEmbeddingConfig


@dataclass(frozen=True)
class OutputBlock:
    """One feature's slice of a lookup output: columns [start, start + cols) of the tensor,
    holding columns [col_offset, col_offset + cols) of table ``table``."""

    table: str
    feature: str
    start: int
    col_offset: int
    cols: int


def lookup_output_blocks(grouped_configs: List[GroupedEmbeddingConfig]) -> List[OutputBlock]:
    blocks: List[OutputBlock] = []
    start = 0
    for config in grouped_configs:
        for table in config.embedding_tables:
            meta = table.local_metadata
            col_offset = int(meta.shard_offsets[1]) if meta is not None else 0
            cols = int(table.local_cols) if table.local_cols > 0 else int(table.embedding_dim)
            for feature in table.feature_names:
                blocks.append(OutputBlock(table.name, feature, start, col_offset, cols))
                start += cols
    return blocks


def column_shard_count(info: EmbeddingShardingInfo) -> int:
    spec = info.param_sharding.sharding_spec
    if not isinstance(spec, EnumerableShardingSpec):
        return 1
    return len({int(s.shard_offsets[1]) for s in spec.shards})


def projected_sharding_info(info: EmbeddingShardingInfo, out_dim: int) -> EmbeddingShardingInfo:
    """The same placement with every shard ``out_dim`` wide.

    A table cut into m column shards becomes m side-by-side d-wide shards (width m·d) whose
    partial projections are summed after the communication.
    """
    m = column_shard_count(info)
    config = copy.deepcopy(info.embedding_config)
    config.embedding_dim = out_dim * m
    spec = info.param_sharding.sharding_spec
    if isinstance(spec, EnumerableShardingSpec):
        col_offsets = sorted({int(s.shard_offsets[1]) for s in spec.shards})
        index = {c: j for j, c in enumerate(col_offsets)}
        spec = EnumerableShardingSpec(
            [
                ShardMetadata(
                    shard_offsets=[int(s.shard_offsets[0]), index[int(s.shard_offsets[1])] * out_dim],
                    shard_sizes=[int(s.shard_sizes[0]), out_dim],
                    placement=s.placement,
                )
                for s in spec.shards
            ]
        )
    param_sharding = dataclasses.replace(info.param_sharding, sharding_spec=spec)
    param = torch.empty(config.num_embeddings, config.embedding_dim, dtype=info.param.dtype, device="meta")
    return EmbeddingShardingInfo(
        embedding_config=config,
        param_sharding=param_sharding,
        param=param,
        fused_params=info.fused_params,
    )


def column_shards_per_feature(infos: List[EmbeddingShardingInfo]) -> Dict[str, int]:
    """feature -> number of column shards (>1 only for column-wise tables)."""
    return {feature: column_shard_count(info) for info in infos for feature in info.embedding_config.feature_names}
