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

On CPU, fbgemm runs EXACT_ROWWISE_ADAGRAD through JIT kernels (SpMDM + SparseAdaGrad, blocks of
64 rows, threaded) whose speed depends on the CPU: per updated row at k=64, 2 threads
(benchmarks/bench_table_update.py), one 2-core box measured 0.69 us for the JIT path against
0.24 for fbgemm's plain C++ loop, another (AMD EPYC, AVX-512) 0.31 against 0.52. So the JIT path
stays the default and ``--cpu-table-update loop`` picks the loop where bench_table_update says it
is faster. The loop is reachable only as fbgemm's counter kernel (WeightDecayMode.COUNTER); with
its neutral settings (no counter weight decay, half-life or lr adjustment) its CPU update is
exactly rowwise Adagrad's (w -= lr * g / (sqrt(G) + eps); the decay factor is 1), and it keeps
two more per-row floats (prev_iter, row_counter: 8 B per row) that the update never reads, so a
checkpoint resumes across the two paths (training/loop_states.py). CUDA always runs fbgemm's
plain rowwise kernel.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Tuple, Type

import torch
from fbgemm_gpu.tbe.config.optimizer_config import CounterBasedRegularizationDefinition, WeightDecayMode
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
# How fused rowwise Adagrad updates tables on CPU (module docstring): fbgemm's loop or its JIT kernel.
CPU_TABLE_UPDATES = ("jit", "loop")
# The per-row states the loop keeps beside momentum1; neutral (never read by the update), so a
# checkpoint without them loads with zeros (training/checkpoint.py).
LOOP_ONLY_STATES = ("prev_iter", "row_counter")
LOOP_STATE_BYTES_PER_ROW = 4 * len(LOOP_ONLY_STATES)


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
    cpu_table_update: str = "jit"  # fused rowwise Adagrad on CPU: fbgemm's JIT kernels or its loop (see above)

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
        if self.cpu_table_update not in CPU_TABLE_UPDATES:
            raise ValueError(
                f"--cpu-table-update must be one of {', '.join(CPU_TABLE_UPDATES)}; got {self.cpu_table_update!r}"
            )
        if self.dense_optimizer not in DENSE_OPTIMIZERS:
            raise ValueError(
                f"--dense-optimizer must be one of {sorted(DENSE_OPTIMIZERS)}; got {self.dense_optimizer!r}"
            )
        for flag, value in (("--embedding-lr", self.embedding_lr), ("--dense-lr", self.dense_lr), ("eps", self.eps)):
            if not (math.isfinite(value) and value > 0):  # nan <= 0 is False: test finiteness
                raise ValueError(f"{flag} must be a finite number > 0, got {value}")

    def _kwargs(self, name: str, lr: float) -> Dict[str, Any]:
        return {"lr": lr} if name == "sgd" else {"lr": lr, "eps": self.eps}

    def uses_table_loop(self, device_type: str) -> bool:
        """Whether fused tables on ``device_type`` update through fbgemm's loop (and keep its states)."""
        return (
            self.embedding_optimizer == "rowwise_adagrad" and device_type == "cpu" and self.cpu_table_update == "loop"
        )

    def fused_table_kwargs(self, device_type: str) -> Dict[str, Any]:
        """The fused table optimizer's arguments on ``device_type`` (TorchRec passes the extra
        ones to fbgemm's TBE as fused params; torchrec's RowWiseAdagrad ignores them)."""
        kwargs = self._kwargs(self.embedding_optimizer, self.embedding_lr)
        if self.uses_table_loop(device_type):
            kwargs["weight_decay_mode"] = WeightDecayMode.COUNTER
            kwargs["counter_based_regularization"] = CounterBasedRegularizationDefinition()  # neutral
        return kwargs


def attach_fused_embedding_optimizer(model: nn.Module, config: OptimConfig, device_type: str) -> None:
    """Mark every table for an in-backward fused optimizer; call before DMP. ``device_type``
    (where the tables will train) picks fbgemm's CPU update path (module docstring)."""
    cls = EMBEDDING_OPTIMIZERS[config.embedding_optimizer]
    for ebc in embedding_collections(model):
        apply_optimizer_in_backward(cls, ebc.parameters(), config.fused_table_kwargs(device_type))


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
