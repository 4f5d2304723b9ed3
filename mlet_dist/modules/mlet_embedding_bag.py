"""MLETEmbeddingBagCollection: an EmbeddingBagCollection whose tables are trained as T (n×k) · W (k×d).

Pure math, no torch.distributed: the wide tables live in a stock TorchRec EmbeddingBagCollection
(``self.wide``) so that TorchRec's sharders and planner place them like any other table; the
projections are small dense modules. Sharders in ``mlet_dist.distributed`` wrap this module.
"""

import warnings
from typing import Dict, List, Optional, cast

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from mlet_dist.modules.projection_kernel import project_blocks
from mlet_dist.modules.input_checks import check_feature_names, check_id_ranges, check_weights
from mlet_dist.modules.mlet_config import MLETTableConfig, check_weighted_pooling


@torch.fx.wrap
def _checked_inputs(
    features: KeyedJaggedTensor, feature_to_table: Dict[str, str], is_weighted: bool, rows_per_feature: Dict[str, int]
) -> None:
    """The input checks as one call: a graph traced with torch.fx (TorchRec's train pipeline traces
    the model to find the sharded modules' inputs) records a call to it instead of failing on
    Python iteration over a traced KJT."""
    check_feature_names(features, feature_to_table)
    check_weights(features, is_weighted)
    check_id_ranges(features, rows_per_feature)


@torch.fx.wrap
def _projected(wide: KeyedTensor, weights: Dict[str, torch.Tensor]) -> KeyedTensor:
    """Each feature's k-wide pooled slice times its W (``weights``: feature -> W), as one call in a
    torch.fx graph (see ``_checked_inputs``). Keys come from the KeyedTensor, not assumed, because
    sharding may reorder them."""
    keys = wide.keys()
    per_key = [weights[key] for key in keys]
    widths = wide.length_per_key()
    starts = [sum(widths[:i]) for i in range(len(widths))]
    out = project_blocks(wide.values(), starts, per_key)
    return KeyedTensor(keys=keys, length_per_key=[w.shape[1] for w in per_key], values=out)


class MLETShardingWarning(UserWarning):
    """An MLET collection sharded as a plain EBC: correct, but k-wide traffic (see ``forward``)."""


class MLETProjection(nn.Module):
    """Bias-free k×d projection with no nonlinearity (so T·W collapses exactly)."""

    def __init__(
        self, inner_dim: int, embedding_dim: int, init_std: float, device: Optional[torch.device] = None
    ) -> None:
        super().__init__()
        self.init_std = init_std
        self.weight = nn.Parameter(torch.empty(inner_dim, embedding_dim, device=device))
        if self.weight.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.init_std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled @ self.weight


class MLETEmbeddingBagCollection(nn.Module):
    """Same contract as torchrec's EmbeddingBagCollection: KJT in, KeyedTensor of d-wide pooled
    embeddings out, ``embedding_bag_configs()`` describing the d-wide view.

    ``validate_inputs`` checks feature names and id ranges on every call (a few reductions on the
    ids); it protects the fbgemm kernels, which do not bound-check. Turn it off only when the data
    loader already guarantees valid ids.
    """

    def __init__(
        self,
        tables: List[MLETTableConfig],
        is_weighted: bool = False,
        device: Optional[torch.device] = None,
        validate_inputs: bool = True,
    ) -> None:
        super().__init__()
        if not tables:
            raise ValueError("MLETEmbeddingBagCollection needs at least one table")
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate table names: {names}")
        check_weighted_pooling(tables, is_weighted)
        self._mlet_configs: List[MLETTableConfig] = list(tables)
        self._is_weighted = is_weighted
        self.validate_inputs = validate_inputs
        self.wide = EmbeddingBagCollection(
            tables=[t.inner_config() for t in tables], is_weighted=is_weighted, device=device
        )
        self.projections = nn.ModuleDict(
            {t.name: MLETProjection(t.inner_dim, t.embedding_dim, t.init_std, device) for t in tables}
        )
        # True: sharded by TorchRec's EBC sharder on purpose (projections as dense DDP parameters
        # after the all-to-all, k-wide traffic); False warns when that happens without our sharder.
        self.projection_after_comm = False
        self._wide_checked = False
        self._feature_to_table: Dict[str, str] = {}
        self._rows_per_feature: Dict[str, int] = {}
        for t in tables:
            for f in t.feature_names:
                if f in self._feature_to_table:
                    raise ValueError(f"feature {f!r} is mapped to two tables")
                self._feature_to_table[f] = t.name
                self._rows_per_feature[f] = t.num_embeddings

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        if not self._wide_checked:
            self._wide_checked = True
            self._warn_if_sharded_as_plain_ebc()
        if self.validate_inputs:
            _checked_inputs(features, self._feature_to_table, self._is_weighted, self._rows_per_feature)
        # Not traceable (it branches on data); a traced graph leaves an empty batch to the kernel,
        # as a stock EBC's does.
        if not is_fx_symbolic_tracing() and features.lengths().numel() == 0:
            return self._empty_output(features)
        wide: KeyedTensor = self.wide(features)
        return self.project(wide)

    def _warn_if_sharded_as_plain_ebc(self) -> None:
        """DistributedModelParallel without our sharder shards only ``wide`` (TorchRec's EBC sharder
        matches it) and wraps the projections in DDP: the model trains the same, but the all-to-all
        carries k-wide vectors, k/d times the traffic, which nothing else would tell the user."""
        if isinstance(self.wide, EmbeddingBagCollection) or self.projection_after_comm:
            return
        warnings.warn(
            "this MLETEmbeddingBagCollection was sharded as a plain EmbeddingBagCollection (its k-wide tables "
            "only; projections replicated, k-wide all-to-all): pass sharders=mlet_dist.sharders() to "
            "DistributedModelParallel to project on the owning rank (d-wide), or set "
            ".projection_after_comm = True before sharding to keep this on purpose",
            MLETShardingWarning,
            stacklevel=3,
        )

    def _empty_output(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """A batch with no rows gives a (0, sum d) result; the fused kernels reject it."""
        keys = [f for t in self._mlet_configs for f in t.feature_names]
        dims = [t.embedding_dim for t in self._mlet_configs for _ in t.feature_names]
        weight = self._first_weight()
        values = torch.zeros(0, sum(dims), device=weight.device, dtype=weight.dtype)
        return KeyedTensor(keys=keys, length_per_key=dims, values=values)

    def project(self, wide: KeyedTensor) -> KeyedTensor:
        """Apply each feature's table projection to its k-wide pooled slice."""
        weights = {f: self.projection_weight(t) for f, t in self._feature_to_table.items()}
        return _projected(wide, weights)

    def mlet_configs(self) -> List[MLETTableConfig]:
        return list(self._mlet_configs)

    def embedding_bag_configs(self) -> List[EmbeddingBagConfig]:
        """The d-wide output view, so models built for a stock EBC (e.g. DLRM) accept this one."""
        return [t.output_config() for t in self._mlet_configs]

    def is_weighted(self) -> bool:
        return self._is_weighted

    def projection_weight(self, table: str) -> torch.Tensor:
        """W (k×d) of ``table``: typed, since ModuleDict items are plain Modules to a type checker."""
        return cast(MLETProjection, self.projections[table]).weight

    def _first_weight(self) -> torch.Tensor:
        return self.projection_weight(next(iter(self.projections)))

    @property
    def device(self) -> torch.device:
        return self._first_weight().device
