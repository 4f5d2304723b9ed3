"""ShardedMLETEmbeddingBagCollection and its sharder: project on the rank that owns a table,
before the output all-to-all / reduce-scatter, so that only d-wide vectors cross the network.

As in TorchRec's fp_embeddingbag.py, the sharder is given the EBC sharder that shards the k-wide
tables (input dist, fused lookups, optimizers and fused params unchanged); the MLET module then
applies each table's projection to the lookup output and rebuilds that sharded EBC's output dists
from a d-wide twin of the plan. Column-wise shards each project their slice; the partial products
are summed after the communication. The TorchRec privates used here are listed in
tests/test_torchrec_contract.py.
"""

from typing import Any, Dict, List, Optional, Tuple, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function
from torchrec.distributed.embedding_sharding import EmbeddingShardingInfo
from torchrec.distributed.embedding_types import BaseEmbeddingSharder, KJTList, ShardedEmbeddingModule
from torchrec.distributed.embeddingbag import (
    EmbeddingBagCollectionContext,
    EmbeddingBagCollectionSharder,
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


def narrow_output_dists(
    ebc: ShardedEmbeddingBagCollection,
    out_dims: Dict[str, int],
    env: ShardingEnv,
    device: Optional[torch.device],
) -> None:
    """Rebuild ``ebc``'s output dists for d-wide vectors: swap in d-wide twins of its shardings
    just long enough to build the output side (the lookups and input dist stay k-wide)."""
    wide = ebc._embedding_shardings
    narrow = [
        ebc.create_embedding_bag_sharding(
            [
                projected_sharding_info(info, out_dims[info.embedding_config.name])
                for info in ebc.sharding_type_to_sharding_infos[sharding_type]
            ],
            env,
            device,
            permute_embeddings=True,
            qcomm_codecs_registry=ebc.qcomm_codecs_registry,
        )
        for sharding_type in ebc._sharding_types
    ]
    for w, n in zip(wide, narrow):
        if w.embedding_names() != n.embedding_names():
            raise RuntimeError(
                "d-wide twin of the sharding plan orders features differently "
                f"({w.embedding_names()} vs {n.embedding_names()}); tables in one sharding "
                "group need a common inner width k"
            )
    ebc._embedding_shardings = narrow
    ebc._output_dists = []
    ebc._embedding_names, ebc._embedding_dims = [], []
    ebc._uncombined_embedding_names, ebc._uncombined_embedding_dims = [], []
    ebc._create_output_dist()
    ebc._embedding_shardings = wide


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
    (TorchRec ShardedTensors) and ``projections.<t>.weight``. ``wide`` is whatever sharded EBC
    ``ebc_sharder`` builds; its own forward must not be called (its output dists are d-wide)."""

    def __init__(
        self,
        module: MLETEmbeddingBagCollection,
        table_name_to_parameter_sharding: Dict[str, ParameterSharding],
        ebc_sharder: EmbeddingBagCollectionSharder,
        env: ShardingEnv,
        device: Optional[torch.device] = None,
        module_fqn: Optional[str] = None,
    ) -> None:
        super().__init__(qcomm_codecs_registry=ebc_sharder.qcomm_codecs_registry)
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
        self.wide: ShardedEmbeddingBagCollection = ebc_sharder.shard(
            module.wide,
            table_name_to_parameter_sharding,
            env,
            device,
            f"{module_fqn}.wide" if module_fqn else "wide",
        )
        # Whatever sharder built it: the projected outputs need the corrected divisor too.
        fix_mean_pooling_divisor(self.wide, table_name_to_parameter_sharding)
        output_blocks: List[List[OutputBlock]] = [
            lookup_output_blocks(cast(List[Any], _unwrap(lookup).grouped_configs)) for lookup in self.wide._lookups
        ]
        infos: List[EmbeddingShardingInfo] = [
            info for st in self.wide._sharding_types for info in self.wide.sharding_type_to_sharding_infos[st]
        ]
        self._column_shards = column_shards_per_feature(infos)
        narrow_output_dists(self.wide, {name: c.embedding_dim for name, c in configs.items()}, env, device)
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
                source=module.projection_weight(name),
            )
        # project()'s W per output block of each lookup: (projection, name of the local shard that
        # is exactly the block's rows or None, row offset, rows), and the blocks' column starts.
        self._block_sources: List[List[Tuple[ShardedProjection, Optional[str], int, int]]] = []
        for blocks in output_blocks:
            sources = []
            for b in blocks:
                proj = cast(ShardedProjection, self.projections[b.table])
                sources.append((proj, proj.whole_shard_name(b.col_offset, b.cols), b.col_offset, b.cols))
            self._block_sources.append(sources)
        self._block_starts = [[b.start for b in blocks] for blocks in output_blocks]

    def project(self, index: int, embs: torch.Tensor) -> torch.Tensor:
        """Multiply each table's k-wide (or column-shard) slice of lookup ``index`` by its rows of W."""
        sources = self._block_sources[index]
        if not sources:
            return embs
        # A whole local shard is fetched by its name (one attribute lookup), a part of one sliced:
        # working out which it is on every step, and a torch.stack in front of the kernel, cost
        # 0.05-0.12 ms per step at 26 tables (fwd + bwd, measured side by side in one process).
        weights = [
            getattr(proj.shards, name) if name is not None else proj.local_slice(offset, rows)
            for proj, name, offset, rows in sources
        ]
        return project_blocks(embs, self._block_starts[index], weights)

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

    # --- ShardedModule API: the wide part's input dist, lookups and (d-wide) output dists ------
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
        # Labelled for benchmarks/profile_step.py: the k-wide lookup and the projection apart.
        outputs = []
        for i, (lookup, features) in enumerate(zip(self.wide._lookups, dist_input)):
            with record_function("mlet.lookup"):
                embs = lookup(features)
            with record_function("mlet.project"):
                outputs.append(self.project(i, embs))
        return outputs

    def output_dist(self, ctx: EmbeddingBagCollectionContext, output: List[torch.Tensor]) -> LazyAwaitable[KeyedTensor]:
        if ctx.variable_batch_per_feature:
            raise NotImplementedError("MLET sharding does not support variable batch per feature")
        awaitable = self.wide.output_dist(ctx, output)
        if any(m > 1 for m in self._column_shards.values()):
            awaitable.callbacks.append(self._sum_column_shards)
        return awaitable

    def compute_and_output_dist(self, ctx: EmbeddingBagCollectionContext, input: KJTList) -> LazyAwaitable[KeyedTensor]:
        return self.output_dist(ctx, self.compute(ctx, input))

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


class MLETEmbeddingBagCollectionSharder(BaseEmbeddingSharder[MLETEmbeddingBagCollection]):
    """Plans the k-wide tables as ``ebc_sharder`` plans EBC tables (sharding types, kernels,
    fused params), less the types MLET does not support; the projection follows its table.
    ``ebc_sharder`` defaults to TorchRec's (no row-wise types on CPU there; distributed/sharding.py
    passes its own, with bounds checks)."""

    def __init__(
        self,
        ebc_sharder: Optional[EmbeddingBagCollectionSharder] = None,
        qcomm_codecs_registry: Optional[Dict[str, QuantizedCommCodecs]] = None,
    ) -> None:
        super().__init__(qcomm_codecs_registry=qcomm_codecs_registry)
        self._ebc_sharder: EmbeddingBagCollectionSharder = ebc_sharder or EmbeddingBagCollectionSharder(
            qcomm_codecs_registry=self.qcomm_codecs_registry
        )

    def shard(
        self,
        module: MLETEmbeddingBagCollection,
        params: Dict[str, ParameterSharding],
        env: ShardingEnv,
        device: Optional[torch.device] = None,
        module_fqn: Optional[str] = None,
    ) -> ShardedMLETEmbeddingBagCollection:
        return ShardedMLETEmbeddingBagCollection(
            module, params, ebc_sharder=self._ebc_sharder, env=env, device=device, module_fqn=module_fqn
        )

    @property
    def fused_params(self) -> Optional[Dict[str, Any]]:
        return self._ebc_sharder.fused_params

    def shardable_parameters(self, module: MLETEmbeddingBagCollection) -> Dict[str, nn.Parameter]:
        return self._ebc_sharder.shardable_parameters(module.wide)

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return [t for t in self._ebc_sharder.sharding_types(compute_device_type) if t in SUPPORTED]

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> List[str]:
        return self._ebc_sharder.compute_kernels(sharding_type, compute_device_type)

    @property
    def module_type(self) -> type:
        return MLETEmbeddingBagCollection
