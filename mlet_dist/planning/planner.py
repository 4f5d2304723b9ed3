"""Offline, MLET-aware sharding plans: no GPUs and no process group needed.

The model is built exactly as train.py builds it (``model_factory`` over the request's ModelConfig:
DLRM or DCN-v2 over the collection, on the meta device, fused table optimizer attached), so module
paths and table names in the plan are the ones ``check_plan_fits`` and DistributedModelParallel expect. TorchRec's
``EmbeddingShardingPlanner`` does the search, with MLET-aware estimators (see estimators.py),
a deterministic enumeration order, and a memory lower bound checked first so that a cluster
that is too small fails with the shortfall named instead of a generic planner error.
"""

import contextlib
import copy
import dataclasses
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.partitioners import MemoryBalancedPartitioner
from torchrec.distributed.planner.perf_models import NoopPerfModel
from torchrec.distributed.planner.shard_estimators import EmbeddingPerfEstimator, EmbeddingStorageEstimator
from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
from torchrec.distributed.planner.types import PlannerError, ShardingOption, Storage, Topology
from torchrec.distributed.planner.utils import reset_shard_rank
from torchrec.distributed.types import ModuleSharder, ShardingPlan, ShardingType

from mlet_dist.config_io import with_leaves
from mlet_dist.distributed.sharding import SHARDING_CHOICES, ShardingConfig, default_sharders
from mlet_dist.models.ranking import ModelConfig, model_factory
from mlet_dist.planning.estimators import (
    DENSE_OPTIMIZER_STATES,
    DedupPerfEstimator,
    LoopStateEstimator,
    MLETProjectionEstimator,
    process_overhead_bytes,
)
from mlet_dist.planning.spec import INT64_MAX, TableSpec
from mlet_dist.planning.topology import GIB, ClusterSpec
from mlet_dist.training.optim import (
    CPU_TABLE_UPDATES,
    EMBEDDING_OPTIMIZERS,
    OptimConfig,
    attach_fused_embedding_optimizer,
)

MIN_CW_DIM = 128  # TorchRec's default column-wise shard width (planner/constants.py)
FP32_BYTES = 4
_UVM_KERNELS = [EmbeddingComputeKernel.FUSED_UVM_CACHING.value, EmbeddingComputeKernel.FUSED_UVM.value]


class PlanDoesNotFitError(ValueError):
    """The tables cannot be placed in the cluster's memory; the message names the shortfall."""


@dataclass
class PlanRequest:
    """What to plan: the model (ModelConfig, as mlet-train builds it), the cluster, and the
    training settings that change the shards' bytes and costs."""

    spec: TableSpec
    cluster: ClusterSpec
    model: ModelConfig = field(default_factory=ModelConfig)
    owner_projection: bool = True
    embedding_optimizer: str = "rowwise_adagrad"
    cpu_table_update: str = "jit"  # mlet-train's --cpu-table-update: "loop" keeps 8 B more per row on CPU
    dense_optimizer: str = "adam"
    batch_size: int = 256  # per rank, as train.py's --batch-size
    sharding: str = "auto"
    cw_shard_dim: Optional[int] = None
    allow_uvm: bool = False
    reserve_fraction: float = 0.15  # TorchRec's default safety margin (HBM only)
    memory_balance: bool = True

    def __post_init__(self) -> None:
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(f"--embedding-optimizer must be one of {sorted(EMBEDDING_OPTIMIZERS)}")
        if self.cpu_table_update not in CPU_TABLE_UPDATES:
            raise ValueError(f"--cpu-table-update must be one of {', '.join(CPU_TABLE_UPDATES)}")
        if self.dense_optimizer not in DENSE_OPTIMIZER_STATES:
            raise ValueError(f"--dense-optimizer must be one of {sorted(DENSE_OPTIMIZER_STATES)}")
        if self.sharding not in SHARDING_CHOICES:
            raise ValueError(f"--sharding must be one of {', '.join(SHARDING_CHOICES)}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if not 0 <= self.reserve_fraction < 1:
            raise ValueError("--reserve-pct must be in [0, 100)")
        if self.cw_shard_dim is not None and self.cw_shard_dim < 1:
            raise ValueError("--cw-shard-dim must be >= 1")
        if self.sharding_config.owner_projection and self.sharding == "table_row_wise" and self.cluster.nodes > 1:
            raise ValueError(
                "table_row_wise MLET tables must span all ranks (one node) with owner-side projection; "
                "use row_wise or table_wise across nodes, or --projection-after-comm"
            )
        self._check_table_bytes()

    def _check_table_bytes(self) -> None:
        """Refuse tables whose fp32 weights overflow int64 byte offsets (torch's storage sizes,
        fbgemm's weights_offsets over all tables of a batch) before TorchRec builds them: it
        stops with a C++ frame dump. Tables that only do not fit the cluster are the planner's
        lower bound's to refuse (``_lower_bound``: it names the shortfall)."""
        width = self.table_width
        biggest = max(self.spec.table_sizes, key=self.spec.table_sizes.__getitem__)
        total = sum(self.spec.table_sizes.values()) * width * FP32_BYTES
        if total > INT64_MAX:  # also covers each table alone
            raise ValueError(
                f"{self.spec.source or self.spec.name}: the tables at width {width} hold {total:,} bytes "
                f"(table {biggest}: {self.spec.table_sizes[biggest]:,} rows), beyond int64 byte offsets "
                "(2**63-1), which torch and fbgemm use"
            )

    # Shorthands for the messages and the report (the values live in ``model``).
    @property
    def mlet(self) -> bool:
        return self.model.embedding.mlet

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding.embedding_dim

    @property
    def inner_dim(self) -> int:
        return self.model.embedding.inner_dim

    @property
    def sharding_config(self) -> ShardingConfig:
        return ShardingConfig(self.sharding, owner_projection=self.owner_projection and self.mlet)

    @property
    def table_width(self) -> int:
        """Width of the tables TorchRec shards: k for MLET, d for the baseline."""
        return self.inner_dim if self.mlet else self.embedding_dim

    @property
    def table_names(self) -> List[str]:
        return [f"t_{feature}" for feature in self.spec.table_sizes]


def plan_request(
    spec: TableSpec, cluster: ClusterSpec, model: Optional[ModelConfig] = None, **settings: Any
) -> PlanRequest:
    """A PlanRequest where the model may also be given by its leaf fields' names
    (``plan_request(spec, cluster, inner_dim=64, mlet=False, sharding="row_wise")``): what is not
    a PlanRequest field is set in ``model`` (config_io.with_leaves refuses unknown names)."""
    own = {f.name for f in dataclasses.fields(PlanRequest)}
    leaves = {k: v for k, v in settings.items() if k not in own}
    model = with_leaves(model or ModelConfig(), leaves)
    return PlanRequest(spec, cluster, model, **{k: v for k, v in settings.items() if k in own})


@dataclass
class PlanResult:
    request: PlanRequest
    plan: ShardingPlan
    options: List[ShardingOption]  # the chosen sharding option per table, shards with ranks
    topology: Topology
    usable_bytes: List[int]  # per rank, after the storage reservation
    dense_reserved_bytes: int  # per rank: dense params (x6 heuristic) as reserved by TorchRec
    kjt_reserved_bytes: int  # per rank: input (KJT) buffers as reserved by TorchRec
    seconds: float
    proposals: int


def uses_table_loop(request: PlanRequest) -> bool:
    """Whether the planned job's fused tables keep fbgemm's CPU loop states (training/optim.py)."""
    return optim_config(request).uses_table_loop(request.cluster.device)


def optim_config(request: PlanRequest) -> OptimConfig:
    """The table optimizer settings of the job the plan is for."""
    return OptimConfig(embedding_optimizer=request.embedding_optimizer, cpu_table_update=request.cpu_table_update)


def build_planning_model(request: PlanRequest, device: torch.device = torch.device("meta")) -> nn.Module:
    """train.py's model (its builder, model_factory: same names) with the fused table optimizer attached."""
    model = model_factory(request.model, request.spec.table_sizes, request.spec.num_dense)(device)
    attach_fused_embedding_optimizer(model, optim_config(request), request.cluster.device)
    return model


def table_constraints(request: PlanRequest) -> Dict[str, ParameterConstraints]:
    """Sharding types / kernels the planner may choose per table.

    Left out by default: column-wise when it would give a single shard (it is table-wise then, and
    the tie makes plans depend on search order); table-row-wise for MLET tables across nodes
    (the owner-side projection needs its group to span all ranks); UVM kernels unless
    ``allow_uvm`` (a plan should fit device memory, not spill to host memory silently).
    """
    if request.sharding != "auto":
        types = [request.sharding]
    else:
        types = [
            ShardingType.DATA_PARALLEL.value,
            ShardingType.TABLE_WISE.value,
            ShardingType.COLUMN_WISE.value,
            ShardingType.ROW_WISE.value,
            ShardingType.TABLE_ROW_WISE.value,
        ]
        if request.table_width // (request.cw_shard_dim or MIN_CW_DIM) < 2:
            types.remove(ShardingType.COLUMN_WISE.value)
        if request.sharding_config.owner_projection and request.cluster.nodes > 1:
            types.remove(ShardingType.TABLE_ROW_WISE.value)
    kernels = [EmbeddingComputeKernel.FUSED.value, EmbeddingComputeKernel.DENSE.value]
    if request.allow_uvm and request.cluster.device == "cuda":
        kernels += _UVM_KERNELS
    return {
        name: ParameterConstraints(
            sharding_types=list(types), compute_kernels=list(kernels), min_partition=request.cw_shard_dim
        )
        for name in request.table_names
    }


class OrderedEnumerator(EmbeddingEnumerator):
    """TorchRec's enumerator intersects allowed and constrained choices through sets, so the
    order of sharding options (and with it the tie-breaks of the search) follows Python's
    per-process string hashing. Keep the sharder's order instead: same inputs, same plan.

    ``on_search_space`` sees the estimated options before the search starts (the planner has
    reserved storage by then), so the memory lower bound costs no second enumeration."""

    on_search_space: Optional[Callable[[List[ShardingOption]], None]] = None

    def enumerate(self, module: nn.Module, sharders: List[ModuleSharder[nn.Module]]) -> List[ShardingOption]:
        search_space = super().enumerate(module, sharders)
        if self.on_search_space is not None:
            self.on_search_space(search_space)
        return search_space

    def _filter_sharding_types(self, name: str, allowed: List[str], sharder_key: str = "") -> List[str]:
        kept = set(super()._filter_sharding_types(name, allowed, sharder_key))
        return [t for t in allowed if t in kept]

    def _filter_compute_kernels(self, name: str, allowed: List[str], sharding_type: str) -> List[str]:
        kept = set(super()._filter_compute_kernels(name, allowed, sharding_type))
        return [k for k in allowed if k in kept]


def _memory(storage: Optional[Storage], kind: str) -> int:
    return 0 if storage is None else int(getattr(storage, kind))


def _process_bytes(request: PlanRequest) -> int:
    """The memory a CPU rank's process holds besides the model (estimators.process_overhead_bytes),
    which the tables cannot use; 0 on GPU, where the tables live in device memory."""
    return process_overhead_bytes(request.batch_size) if request.cluster.device == "cpu" else 0


def _fmt_gib(n: float) -> str:
    return f"{n / GIB:,.2f} GiB"


@contextlib.contextmanager
def _quiet_planner_logs() -> Iterator[None]:
    """TorchRec's planner logs warnings meant for live jobs (dry-run dense estimates, data-parallel
    tables "without a sharding spec") through the root logger; mute warnings while planning."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _remedies(request: PlanRequest, per_table: bool) -> str:
    lighter = {"adagrad": "rowwise_adagrad or sgd", "rowwise_adagrad": "sgd"}.get(request.embedding_optimizer)
    return (
        ("Spread the table over more ranks (--world, --sharding row_wise)" if per_table else "Use a larger --world")
        + ", more memory per device"
        + (", a smaller k" if request.mlet else "")
        + (f", or a lighter --embedding-optimizer ({lighter})" if lighter else "")
    )


def _lower_bound(search_space: List[ShardingOption], kind: str, usable: List[int], request: PlanRequest) -> None:
    """Raise PlanDoesNotFitError when no assignment can fit, naming the shortfall."""
    by_table: Dict[str, List[ShardingOption]] = {}
    for option in search_space:
        by_table.setdefault(option.name, []).append(option)
    cluster = request.cluster
    per_device = max(usable)
    process = _process_bytes(request)
    reservation = (
        "TorchRec's reservation for dense params and input buffers"
        + (f" and a {request.reserve_fraction:.0%} margin" if kind == "hbm" else "")
        + (f" and the rank process's own {_fmt_gib(process)} (libraries, input, activations)" if process else "")
    )
    what = (
        f"k={request.inner_dim} tables + {request.embedding_optimizer} state"
        + (" + projections" if request.sharding_config.owner_projection else "")
        if request.mlet
        else f"d={request.embedding_dim} tables + {request.embedding_optimizer} state"
    )
    need = 0
    for name, options in by_table.items():
        totals = [sum(_memory(s.storage, kind) for s in o.shards) for o in options]
        peaks = [max(_memory(s.storage, kind) for s in o.shards) for o in options]
        need += min(totals)
        best = min(range(len(options)), key=lambda i: peaks[i])
        if peaks[best] > per_device:
            o = options[best]
            rows, width = o.tensor.shape
            ranks = len(o.shards)
            raise PlanDoesNotFitError(
                f"table {name} ({rows:,} rows x {width}; {what}) needs {_fmt_gib(peaks[best])} on one "
                f"device even in its most spread-out allowed placement ({o.sharding_type} over {ranks} "
                f"rank{'s' if ranks > 1 else ''}), but a {cluster.device} device has {_fmt_gib(per_device)} "
                f"usable of {_fmt_gib(cluster.mem_bytes)} after {reservation}: short by "
                f"{_fmt_gib(peaks[best] - per_device)} per device. {_remedies(request, True)}."
            )
    have = sum(usable)
    if need > have:
        raise PlanDoesNotFitError(
            f"the tables need at least {_fmt_gib(need)} for training ({what} + lookup buffers, cheapest "
            f"placement of each), but {cluster.shape} = {cluster.world_size} {cluster.device} ranks x "
            f"{_fmt_gib(cluster.mem_bytes)} leave {_fmt_gib(have)} after {reservation}: short by "
            f"{_fmt_gib(need - have)} (about {math.ceil((need - have) / per_device)} more devices). "
            f"{_remedies(request, False)}."
        )


BALANCE_TOLERANCE = 0.02


def _balance_memory(
    best: List[ShardingOption], reserved: Optional[Topology], topology: Topology
) -> List[ShardingOption]:
    """Re-place the winning proposal with TorchRec's MemoryBalancedPartitioner: the lowest
    per-device HBM peak whose perf rating stays within 2% of the planner's choice.

    TorchRec's default partitioner balances estimated perf only; table-wise shards of a 3-row and
    a 190M-row table cost the same there, so one device can end up with most of the memory while
    the others idle. Same sharding types, only the ranks change; kept only if not slower."""
    if reserved is None:
        return best
    candidate = copy.deepcopy(best)
    reset_shard_rank(candidate)
    try:
        candidate = MemoryBalancedPartitioner(tolerance=BALANCE_TOLERANCE).partition(candidate, reserved)
    except PlannerError:
        return best
    model = NoopPerfModel(topology)
    return candidate if model.rate(candidate) <= model.rate(best) * (1 + BALANCE_TOLERANCE) else best


def plan_tables(request: PlanRequest) -> PlanResult:
    """Plan offline for ``request.cluster``; raises PlanDoesNotFitError with the shortfall."""
    start = time.perf_counter()
    model = build_planning_model(request)
    sharders: List[ModuleSharder[nn.Module]] = default_sharders(request.sharding_config)
    topology = request.cluster.topology(_process_bytes(request))  # a CPU rank's own memory is not the tables'
    constraints = table_constraints(request)
    kind = request.cluster.memory_kind
    estimators = [
        DedupPerfEstimator(EmbeddingPerfEstimator(topology=topology, constraints=constraints)),
        EmbeddingStorageEstimator(topology=topology, constraints=constraints),
        MLETProjectionEstimator(topology, request.dense_optimizer),
        LoopStateEstimator(uses_table_loop(request)),
    ]
    enumerator = OrderedEnumerator(
        topology=topology, batch_size=request.batch_size, constraints=constraints, estimator=estimators
    )
    with warnings.catch_warnings(), _quiet_planner_logs():
        warnings.simplefilter("ignore")
        reservation = HeuristicalStorageReservation(percentage=request.reserve_fraction)
        usable: List[int] = []

        def check_fits(search_space: List[ShardingOption]) -> None:
            reserved = reservation.last_reserved_topology
            assert reserved is not None, "the planner reserves storage before it enumerates"
            usable[:] = [_memory(d.storage, kind) for d in reserved.devices]
            _lower_bound(search_space, kind, usable, request)

        enumerator.on_search_space = check_fits
        chosen: List[List[ShardingOption]] = []

        def keep(best: List[ShardingOption]) -> List[ShardingOption]:
            if request.memory_balance and kind == "hbm":
                best = _balance_memory(best, reservation.last_reserved_topology, topology)
            chosen.append(best)
            return best

        planner = EmbeddingShardingPlanner(
            topology=topology,
            batch_size=request.batch_size,
            enumerator=enumerator,
            storage_reservation=reservation,
            constraints=constraints,
            stats=[],
            debug=False,
            callbacks=[keep],
        )
        try:
            plan = planner.plan(model, sharders)
        except PlannerError as err:
            if not usable:  # the reservation itself left nothing
                raise PlanDoesNotFitError(f"nothing is left for the tables on a {request.cluster.device} device: {err}")
            raise PlanDoesNotFitError(
                f"TorchRec's planner found no placement for {request.cluster.shape} {request.cluster.device} "
                f"although the total fits (the tables do not bin-pack into {_fmt_gib(max(usable))} usable "
                f"per device): {str(err).splitlines()[0]}"
            )
    seconds = time.perf_counter() - start
    dense = getattr(reservation, "_dense_storage", None)
    kjt = getattr(reservation, "_kjt_storage", None)
    return PlanResult(
        request=request,
        plan=plan,
        options=chosen[-1] if chosen else [],
        topology=topology,
        usable_bytes=usable,
        dense_reserved_bytes=_memory(dense, kind),
        kjt_reserved_bytes=_memory(kjt, kind),
        seconds=seconds,
        proposals=planner._num_proposals,
    )
