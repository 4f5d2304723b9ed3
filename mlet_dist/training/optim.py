"""Optimizers: fused (in-backward, fbgemm) for embedding tables, torch.optim for the rest.

MLET projections are dense parameters here, so they take the dense optimizer.

Data-parallel tables are the exception TorchRec leaves to us: DMP replicates them with the
dense compute kernel inside a DDP wrapper, as fresh parameters that carry no in-backward
optimizer, so ``in_backward_optimizer_filter`` hands them to the dense optimizer and
``--embedding-optimizer``/``--embedding-lr`` would be ignored for them. ``build_optimizer``
gives them the configured embedding optimizer as a torch optimizer stepped after the DDP
all-reduce: torch SGD and Adagrad and torchrec's RowWiseAdagrad compute exactly fbgemm's
EXACT_SGD / EXACT_ADAGRAD / EXACT_ROWWISE_ADAGRAD update on the averaged gradient (rows
absent from the batch have a zero gradient and do not move), and their state is checkpointed
with the rest of the CombinedOptimizer.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Tuple, Type

import torch
from torch import nn
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.types import ShardingType
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from mlet_dist.distributed.sharding import embedding_collections
from mlet_dist.training.lr_schedule import LRSchedule, LRScheduleConfig, ParamGroup
from mlet_dist.training.precision import DENSE_PRECISIONS, FP16_REFUSAL

EMBEDDING_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
}
DENSE_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "adam": torch.optim.Adam,
}
# Dense optimizers stepped by torch's fused kernel (one op per parameter instead of ~6 elementwise
# ops each). At batch 128 on CPU the per-op cost dominates: over the DLRM MLPs and 26 MLET
# projections Adam's step took 141 ms fused-off vs 31 ms fused on a loaded 2-core box (Adagrad 268
# vs 67), equal to the loop's update within 2.4e-7. SGD is left out: fused measured no faster.
FUSED_DENSE_OPTIMIZERS = frozenset({"adam", "adagrad"})
FUSED_DEVICES = frozenset({"cpu", "cuda"})


@dataclass
class OptimConfig:
    """Defaults picked by validation AUC on the Criteo sample (rowwise Adagrad 0.05 for tables,
    Adam 1e-3 for the MLPs and projections); a dense Adagrad at 0.05 diverged at step 2."""

    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.05
    dense_optimizer: str = "adam"
    dense_lr: float = 1e-3
    eps: float = 1e-8
    schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)  # warm-up/decay of both lrs
    dense_precision: str = "fp32"  # autocast of the MLPs and the interaction (training/precision.py)

    def __post_init__(self) -> None:
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(
                f"--embedding-optimizer must be one of {sorted(EMBEDDING_OPTIMIZERS)} "
                f"(the fused CPU/GPU kernels); got {self.embedding_optimizer!r}"
            )
        if self.dense_precision not in DENSE_PRECISIONS:
            raise ValueError(
                f"--dense-precision must be one of {', '.join(DENSE_PRECISIONS)}; got {self.dense_precision!r}"
            )
        if self.dense_precision == "fp16":
            raise ValueError(FP16_REFUSAL)
        if self.dense_optimizer not in DENSE_OPTIMIZERS:
            raise ValueError(
                f"--dense-optimizer must be one of {sorted(DENSE_OPTIMIZERS)}; got {self.dense_optimizer!r}"
            )
        for flag, value in (("--embedding-lr", self.embedding_lr), ("--dense-lr", self.dense_lr), ("eps", self.eps)):
            if not (math.isfinite(value) and value > 0):  # nan <= 0 is False: test finiteness
                raise ValueError(f"{flag} must be a finite number > 0, got {value}")

    def _kwargs(self, name: str, lr: float) -> Dict[str, Any]:
        return {"lr": lr} if name == "sgd" else {"lr": lr, "eps": self.eps}


def attach_fused_embedding_optimizer(model: nn.Module, config: OptimConfig) -> None:
    """Mark every table for an in-backward fused optimizer; call before DMP."""
    cls = EMBEDDING_OPTIMIZERS[config.embedding_optimizer]
    for ebc in embedding_collections(model):
        apply_optimizer_in_backward(
            cls, ebc.parameters(), config._kwargs(config.embedding_optimizer, config.embedding_lr)
        )


def data_parallel_table_parameters(sharded_model: nn.Module) -> Dict[str, nn.Parameter]:
    """Name -> weight of every table the plan replicates (DATA_PARALLEL) in a sharded model.

    Found through each sharded collection's plan, not by name, so it holds for stock EBCs, the
    MLET ``wide`` collection and any prefix DMP adds."""
    replicated = set()
    for module in sharded_model.modules():
        if isinstance(module, ShardedEmbeddingBagCollection):
            for table, sharding in module.module_sharding_plan.items():
                if sharding.sharding_type == ShardingType.DATA_PARALLEL.value:
                    replicated.add(id(module.embedding_bags[table].weight))
    return {name: p for name, p in sharded_model.named_parameters() if id(p) in replicated}


def fused_kwargs(name: str, params: Iterable[torch.Tensor]) -> Dict[str, Any]:
    """``fused=True`` where torch's fused kernel serves ``name`` for every parameter (floating,
    on CPU or CUDA); otherwise nothing, and torch's default per-tensor loop runs."""
    params = list(params)
    if name not in FUSED_DENSE_OPTIMIZERS or not params:
        return {}
    if all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


def build_optimizer(sharded_model: nn.Module, config: OptimConfig) -> CombinedOptimizer:
    """The DMP's fused table optimizers, the embedding optimizer over data-parallel tables
    (which DMP does not fuse, see the module docstring) and a dense optimizer over the rest, in
    that order: ``lr_schedule`` finds the dense part as the last one."""
    not_fused = dict(in_backward_optimizer_filter(sharded_model.named_parameters()))
    replicated_tables = {  # only those TorchRec left unfused
        name: p for name, p in data_parallel_table_parameters(sharded_model).items() if name in not_fused
    }
    dense_params = {name: p for name, p in not_fused.items() if name not in replicated_tables}
    optimizers = [sharded_model.fused_optimizer]
    if replicated_tables:
        table_cls = EMBEDDING_OPTIMIZERS[config.embedding_optimizer]
        table_kwargs = config._kwargs(config.embedding_optimizer, config.embedding_lr)
        optimizers.append(KeyedOptimizerWrapper(replicated_tables, lambda params: table_cls(params, **table_kwargs)))
    cls = DENSE_OPTIMIZERS[config.dense_optimizer]
    kwargs = {
        **config._kwargs(config.dense_optimizer, config.dense_lr),
        **fused_kwargs(config.dense_optimizer, dense_params.values()),
    }
    optimizers.append(KeyedOptimizerWrapper(dense_params, lambda params: cls(params, **kwargs)))
    return CombinedOptimizer(optimizers)


def lr_schedule(optimizer: CombinedOptimizer, config: OptimConfig) -> LRSchedule:
    """The schedule over ``build_optimizer``'s optimizer: its last part is the dense optimizer
    (base lr --dense-lr), every part before it holds tables (--embedding-lr), fused or not."""
    *table_parts, (_, dense) = optimizer.optimizers
    groups: List[Tuple[ParamGroup, float]] = []
    if config.schedule.schedules("embedding"):
        groups += [(group, config.embedding_lr) for _, part in table_parts for group in part.param_groups]
    if config.schedule.schedules("dense"):
        groups += [(group, config.dense_lr) for group in dense.param_groups]
    return LRSchedule(groups, config.schedule)
