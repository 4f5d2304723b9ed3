"""ShardedMLETEmbeddingBagCollection: project on the rank that owns a table, before the
output all-to-all / reduce-scatter, so that only d-wide vectors cross the network.

The wide tables are sharded by TorchRec's own ShardedEmbeddingBagCollection (input dist, fused
lookups and optimizers are unchanged); this subclass applies each table's projection to the
lookup output and builds the output dists from a d-wide twin of the sharding plan. Column-wise
shards each project their slice; the partial products are summed after the communication.
"""

from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.embedding_sharding import EmbeddingShardingInfo
from torchrec.distributed.embedding_types import KJTList, ShardedEmbeddingModule
from torchrec.distributed.embeddingbag import (
    EmbeddingBagCollectionContext,
    ShardedEmbeddingBagCollection,
)
from torchrec.distributed.types import (
    Awaitable,
    LazyAwaitable,
    ParameterSharding,
    QuantizedCommCodecs,
    ShardingEnv,
    ShardingType,
)
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import KeyedOptimizer
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from mlet_dist.distributed.mean_pooling import fix_mean_pooling_divisor
from mlet_dist.distributed.projection_layout import (
    OutputBlock,
    column_shards_per_feature,
    lookup_output_blocks,
    projected_sharding_info,
)
from mlet_dist.distributed.sharded_projection import ShardedProjection
from mlet_dist.modules.projection_kernel import project_blocks
from mlet_dist.modules.input_checks import check_feature_names, check_id_ranges, check_weights
from mlet_dist.modules.mlet_config import MLETTableConfig, check_weighted_pooling
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection

PARTITIONED = {ShardingType.TABLE_WISE.value, ShardingType.COLUMN_WISE.value}
SUPPORTED = PARTITIONED | {
    ShardingType.ROW_WISE.value,
    ShardingType.TABLE_ROW_WISE.value,
    ShardingType.DATA_PARALLEL.value,
}


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


class ProjectingShardedEBC(ShardedEmbeddingBagCollection):
    """TorchRec's sharded EBC over the k-wide tables, with d-wide output dists."""

    def __init__(
        self,
        module: EmbeddingBagCollection,
        table_name_to_parameter_sharding: Dict[str, ParameterSharding],
        env: ShardingEnv,
        out_dims: Dict[str, int],
        fused_params: Optional[Dict[str, Any]] = None,
        device: Optional[torch.device] = None,
        qcomm_codecs_registry: Optional[Dict[str, QuantizedCommCodecs]] = None,
        module_fqn: Optional[str] = None,
    ) -> None:
        super().__init__(
            module=module,
            table_name_to_parameter_sharding=table_name_to_parameter_sharding,
            env=env,
            fused_params=fused_params,
            device=device,
            qcomm_codecs_registry=qcomm_codecs_registry,
            module_fqn=module_fqn,
        )
        fix_mean_pooling_divisor(self, table_name_to_parameter_sharding)
        self._projections: Optional[nn.ModuleDict] = None  # set by the owner, not registered here
        self.output_blocks: List[List[OutputBlock]] = [
            lookup_output_blocks(_unwrap(lookup).grouped_configs) for lookup in self._lookups
        ]
        infos: List[EmbeddingShardingInfo] = [
            info for st in self._sharding_types for info in self.sharding_type_to_sharding_infos[st]
        ]
        self._column_shards = column_shards_per_feature(infos)
        self._rebuild_output_dists(out_dims, env, device)

    def _rebuild_output_dists(
        self, out_dims: Dict[str, int], env: ShardingEnv, device: Optional[torch.device]
    ) -> None:
        """Swap in d-wide twins of the shardings just long enough to build the output side."""
        wide = self._embedding_shardings
        narrow = [
            self.create_embedding_bag_sharding(
                [
                    projected_sharding_info(info, out_dims[info.embedding_config.name])
                    for info in self.sharding_type_to_sharding_infos[sharding_type]
                ],
                env,
                device,
                permute_embeddings=True,
                qcomm_codecs_registry=self.qcomm_codecs_registry,
            )
            for sharding_type in self._sharding_types
        ]
        for w, n in zip(wide, narrow):
            if w.embedding_names() != n.embedding_names():
                raise RuntimeError(
                    "d-wide twin of the sharding plan orders features differently "
                    f"({w.embedding_names()} vs {n.embedding_names()}); tables in one sharding "
                    "group need a common inner width k"
                )
        self._embedding_shardings = narrow
        self._output_dists = []
        self._embedding_names, self._embedding_dims = [], []
        self._uncombined_embedding_names, self._uncombined_embedding_dims = [], []
        self._create_output_dist()
        self._embedding_shardings = wide

    def attach_projections(self, projections: nn.ModuleDict) -> None:
        # Held in a plain dict entry so the parameters are registered once, by the owner.
        self.__dict__["_projections"] = projections

    def project(self, index: int, embs: torch.Tensor) -> torch.Tensor:
        """Multiply each table's k-wide (or column-shard) slice by its rows of W."""
        blocks = self.output_blocks[index]
        if not blocks:
            return embs
        projections = self.__dict__["_projections"]
        weights = [projections[b.table].local_slice(b.col_offset, b.cols) for b in blocks]
        return project_blocks(embs, [b.start for b in blocks], weights)

    def compute(self, ctx: EmbeddingBagCollectionContext, dist_input: KJTList) -> List[torch.Tensor]:
        return [
            self.project(i, lookup(features))
            for i, (lookup, features) in enumerate(zip(self._lookups, dist_input))
        ]

    def compute_and_output_dist(
        self, ctx: EmbeddingBagCollectionContext, input: KJTList
    ) -> LazyAwaitable[KeyedTensor]:
        if ctx.variable_batch_per_feature:
            raise NotImplementedError("MLET sharding does not support variable batch per feature yet")
        awaitable = self.output_dist(ctx, self.compute(ctx, input))
        if any(m > 1 for m in self._column_shards.values()):
            awaitable.callbacks.append(self._sum_column_shards)
        return awaitable

    def _sum_column_shards(self, kt: KeyedTensor) -> KeyedTensor:
        """A column-wise table arrives as m partial d-wide products side by side: add them."""
        pieces, dims = [], []
        for key, value in zip(kt.keys(), kt.values().split(kt.length_per_key(), dim=1)):
            m = self._column_shards.get(key.split("@")[0], 1)
            if m > 1:
                value = value.reshape(value.shape[0], m, -1).sum(dim=1)
            pieces.append(value)
            dims.append(value.shape[1])
        return KeyedTensor(keys=kt.keys(), length_per_key=dims, values=torch.cat(pieces, dim=1))


def partitioned_projection_shards(sharding: ParameterSharding, out_dim: int) -> List[ShardMetadata]:
    """Row slices of W (k×d) matching the column ranges of T's shards, on the same ranks."""
    spec = sharding.sharding_spec
    assert isinstance(spec, EnumerableShardingSpec)
    by_column: Dict[int, ShardMetadata] = {}
    for s in spec.shards:
        by_column.setdefault(int(s.shard_offsets[1]), s)
    return [
        ShardMetadata(shard_offsets=[col, 0], shard_sizes=[int(s.shard_sizes[1]), out_dim], placement=s.placement)
        for col, s in sorted(by_column.items())
    ]


class ShardedMLETEmbeddingBagCollection(
    ShardedEmbeddingModule[KJTList, List[torch.Tensor], KeyedTensor, EmbeddingBagCollectionContext]
):
    """State dict keys match MLETEmbeddingBagCollection: ``wide.embedding_bags.<t>.weight``
    (TorchRec ShardedTensors) and ``projections.<t>.weight``."""

    def __init__(
        self,
        module: MLETEmbeddingBagCollection,
        table_name_to_parameter_sharding: Dict[str, ParameterSharding],
        env: ShardingEnv,
        fused_params: Optional[Dict[str, Any]] = None,
        device: Optional[torch.device] = None,
        qcomm_codecs_registry: Optional[Dict[str, QuantizedCommCodecs]] = None,
        module_fqn: Optional[str] = None,
    ) -> None:
        super().__init__(qcomm_codecs_registry=qcomm_codecs_registry)
        configs = {c.name: c for c in module.mlet_configs()}
        for name, sharding in table_name_to_parameter_sharding.items():
            if sharding.sharding_type not in SUPPORTED:
                raise ValueError(
                    f"table {name!r}: sharding type {sharding.sharding_type} is not supported for MLET "
                    f"tables; use one of {sorted(SUPPORTED)}"
                )
        device = device or torch.device("cpu")
        self._mlet_configs: List[MLETTableConfig] = module.mlet_configs()
        self._is_weighted = module.is_weighted()
        check_weighted_pooling(self._mlet_configs, self._is_weighted)
        self._validate_inputs = module.validate_inputs
        self._feature_to_table = {f: c.name for c in self._mlet_configs for f in c.feature_names}
        self._rows_per_feature = {f: c.num_embeddings for c in self._mlet_configs for f in c.feature_names}
        self.wide = ProjectingShardedEBC(
            module.wide,
            table_name_to_parameter_sharding,
            env,
            out_dims={name: c.embedding_dim for name, c in configs.items()},
            fused_params=fused_params,
            device=device,
            qcomm_codecs_registry=qcomm_codecs_registry,
            module_fqn=f"{module_fqn}.wide" if module_fqn else "wide",
        )
        rank = dist.get_rank(env.process_group)
        self.projections = nn.ModuleDict()
        for name in sorted(configs):  # same order on every rank: the constructors communicate
            cfg = configs[name]
            sharding = table_name_to_parameter_sharding[name]
            global_shards, group, average = None, None, False
            if sharding.sharding_type in PARTITIONED:
                global_shards = partitioned_projection_shards(sharding, cfg.embedding_dim)
            elif sharding.sharding_type == ShardingType.TABLE_ROW_WISE.value:
                if sorted(set(sharding.ranks or [])) != list(range(env.world_size)):
                    raise NotImplementedError(
                        f"table {name!r}: table-row-wise MLET tables must span all ranks for now "
                        "(one node); use row_wise or table_wise across nodes"
                    )
                group = env.process_group
            elif sharding.sharding_type == ShardingType.DATA_PARALLEL.value:
                group, average = env.process_group, True
            else:
                group = env.process_group
            self.projections[name] = ShardedProjection(
                cfg.inner_dim,
                cfg.embedding_dim,
                cfg.init_std,
                device,
                rank,
                global_shards,
                group=group,
                average_grads=average,
                source=module.projections[name].weight,
            )
        self.wide.attach_projections(self.projections)

    # --- ShardedModule API, delegated to the wide part --------------------------------------
    def create_context(self) -> EmbeddingBagCollectionContext:
        return self.wide.create_context()

    def input_dist(
        self, ctx: EmbeddingBagCollectionContext, features: KeyedJaggedTensor
    ) -> Awaitable[Awaitable[KJTList]]:
        if self._validate_inputs:
            check_feature_names(features, self._feature_to_table)
            check_weights(features, self._is_weighted)
            check_id_ranges(features, self._rows_per_feature)
        return self.wide.input_dist(ctx, features)

    def compute(self, ctx: EmbeddingBagCollectionContext, dist_input: KJTList) -> List[torch.Tensor]:
        return self.wide.compute(ctx, dist_input)

    def output_dist(
        self, ctx: EmbeddingBagCollectionContext, output: List[torch.Tensor]
    ) -> LazyAwaitable[KeyedTensor]:
        return self.wide.output_dist(ctx, output)

    def compute_and_output_dist(
        self, ctx: EmbeddingBagCollectionContext, input: KJTList
    ) -> LazyAwaitable[KeyedTensor]:
        return self.wide.compute_and_output_dist(ctx, input)

    @property
    def fused_optimizer(self) -> KeyedOptimizer:
        return self.wide.fused_optimizer

    def sharded_parameter_names(self, prefix: str = "") -> Any:
        # Every parameter here is managed by the sharder (tables: fused; projections: own sync),
        # so DMP's DDP must leave them all alone.
        for name, _ in self.named_parameters(prefix=prefix):
            yield name

    def embedding_bag_configs(self) -> Any:
        return [c.output_config() for c in self._mlet_configs]

    def mlet_configs(self) -> List[MLETTableConfig]:
        return list(self._mlet_configs)
