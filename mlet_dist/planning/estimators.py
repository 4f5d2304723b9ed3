"""MLET-aware shard estimators for TorchRec's planner.

TorchRec's enumerator runs a list of ShardEstimators over every sharding option it considers
and writes ``shard.storage`` / ``shard.perf``; its partitioner, proposers and perf model only
read those. So the MLET parts are added there, and everything downstream (bin packing against
each device's memory, balancing by perf, the "does not fit" search) sees them:

* k-wide table + fused optimizer state: TorchRec's own ``EmbeddingStorageEstimator`` already
  counts them, because the sharded parameter *is* the n×k table and the optimizer class comes
  from ``apply_optimizer_in_backward`` (SGD 0, RowWiseAdagrad 1/k, Adagrad/others 1, Adam 2
  extra copies per weight).
* fbgemm's CPU loop states: with ``--cpu-table-update loop`` fused rowwise Adagrad keeps two
  more floats per row on CPU (training/optim.py) that TorchRec's estimator does not know;
  ``LoopStateEstimator`` adds them to each fused shard.
* projection W (k×d fp32) on the shard holders (owner-side projection only):
  ``MLETProjectionEstimator`` adds ``rows_of_W × d × 4 × (1 weight + 1 grad + dense optimizer
  states)`` to each shard: all k rows for table-wise / row-wise / table-row-wise /
  data-parallel shards (W is whole on the owner or replicated in the group), the matching
  ``cols`` rows for a column-wise shard (its slice of W).
* output traffic: with the projection on the owner, the output all-to-all / reduce-scatter
  carries d-wide vectors instead of k-wide (``cols``-wide per column shard), so the
  estimator scales TorchRec's fwd/bwd comms by ``d / cols``; the projection matmul itself is
  added as memory-bound compute (read ``cols``, write ``d`` floats per pooled output; twice for
  backward), in TorchRec's bytes/bandwidth style.
* With ``--projection-after-comm`` the projections are dense DDP parameters on every rank
  (TorchRec's storage reservation counts them among the dense parameters) and the comms really
  are k-wide, so nothing is adjusted.

``DedupPerfEstimator`` wraps TorchRec's perf estimator so that shards of equal size are
estimated once (row-wise / data-parallel options on 512 ranks have 512 identical shards); the
per-shard perf depends only on the shard size, so results are identical, just faster.
"""

import copy
from typing import Dict, List, Optional

from torchrec.distributed.planner.types import (
    Perf,
    Shard,
    ShardEstimator,
    ShardingOption,
    Storage,
    Topology,
)
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.types import ShardingType

from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection
from mlet_dist.training.optim import LOOP_STATE_BYTES_PER_ROW

FP32 = 4
# Resident memory of a training rank process beyond its tables and TorchRec's reservation: the
# torch/TorchRec/fbgemm libraries, gloo, the input pipeline's read-ahead (fixed), and the MLPs'
# activations and gradients (per sample). Measured (issue 26): peak RSS of each of 2 gloo ranks of
# mlet-train (default MLPs) on 26 tables of 100 rows, 30 steps, minus the plan's training total:
# batch 2048: MLET 64->16 588/583 MB, baseline d=16 560/560 MB; batch 256: 471/463, 465/459 MB.
# Counted per rank on CPU plans, where the tables share that process memory; on GPUs it is host
# memory, not HBM, so it is not added to an HBM total.
PROCESS_BASE_BYTES = 450 * 1000 * 1000
PROCESS_BYTES_PER_SAMPLE = 65 * 1000


def process_overhead_bytes(batch_size: int) -> int:
    """A CPU training rank's own resident memory at this per-rank batch (see above)."""
    return PROCESS_BASE_BYTES + PROCESS_BYTES_PER_SAMPLE * batch_size


# Dense optimizer state copies per parameter (train.py's --dense-optimizer; SGD has no momentum).
DENSE_OPTIMIZER_STATES: Dict[str, int] = {"sgd": 0, "adagrad": 1, "adam": 2}


def mlet_dims(option: ShardingOption) -> Optional[tuple]:
    """(k, d) when the option is a table of an MLET collection planned by the MLET sharder."""
    module = option.module[1]
    if not isinstance(module, MLETEmbeddingBagCollection):
        return None
    for config in module.mlet_configs():
        if config.name == option.name:
            return config.inner_dim, config.embedding_dim
    return None


def projection_rows(option: ShardingOption, shard: Shard, k: int) -> int:
    """Rows of W (k×d) that live with this shard."""
    if option.sharding_type == ShardingType.COLUMN_WISE.value:
        return int(shard.size[1])
    return k


def projection_bytes(rows: int, d: int, dense_optimizer: str) -> int:
    return rows * d * FP32 * (2 + DENSE_OPTIMIZER_STATES[dense_optimizer])


class DedupPerfEstimator(ShardEstimator):
    """Runs ``inner`` on one shard per distinct shard size and copies the result to the rest."""

    def __init__(self, inner: ShardEstimator) -> None:
        self._inner = inner

    def estimate(self, sharding_options: List[ShardingOption], sharder_data_map=None) -> None:
        originals = []
        for option in sharding_options:
            unique: Dict[tuple, Shard] = {}
            for shard in option.shards:
                unique.setdefault(tuple(shard.size), Shard(size=list(shard.size), offset=list(shard.offset)))
            originals.append(option.shards)
            option.shards = list(unique.values())
        try:
            self._inner.estimate(sharding_options, sharder_data_map=sharder_data_map)
        finally:
            for option, shards in zip(sharding_options, originals):
                estimated = {tuple(s.size): s.perf for s in option.shards}
                option.shards = shards
                for shard in shards:
                    shard.perf = copy.copy(estimated[tuple(shard.size)])


class MLETProjectionEstimator(ShardEstimator):
    """Adds owner-side projection storage and d-wide output traffic; run after TorchRec's estimators."""

    def __init__(self, topology: Topology, dense_optimizer: str = "adam") -> None:
        if dense_optimizer not in DENSE_OPTIMIZER_STATES:
            raise ValueError(
                f"dense optimizer must be one of {sorted(DENSE_OPTIMIZER_STATES)}, got {dense_optimizer!r}"
            )
        self._topology = topology
        self._dense_optimizer = dense_optimizer
        self._memory = "hbm" if topology.compute_device in {"cuda", "mtia"} else "ddr"
        self._device_bw = topology.hbm_mem_bw if self._memory == "hbm" else topology.ddr_mem_bw

    def estimate(self, sharding_options: List[ShardingOption], sharder_data_map=None) -> None:
        for option in sharding_options:
            dims = mlet_dims(option)
            if dims is None:
                continue
            k, d = dims
            data_parallel = option.sharding_type == ShardingType.DATA_PARALLEL.value
            # pooled outputs each shard projects per step: owners see the global batch
            outputs = option.batch_size * option.num_inputs * (1 if data_parallel else self._topology.world_size)
            for shard in option.shards:
                extra = projection_bytes(projection_rows(option, shard, k), d, self._dense_optimizer)
                if shard.storage is not None:
                    shard.storage = shard.storage + Storage(
                        hbm=extra if self._memory == "hbm" else 0,
                        ddr=extra if self._memory == "ddr" else 0,
                        ssd=0,
                    )
                if shard.perf is None:
                    continue
                cols = int(shard.size[1])
                scale = 1.0 if data_parallel else d / cols
                matmul = outputs * (cols + d) * FP32 / self._device_bw
                p = shard.perf
                shard.perf = Perf(
                    fwd_compute=p.fwd_compute + matmul,
                    fwd_comms=p.fwd_comms * scale,
                    bwd_compute=p.bwd_compute + 2 * matmul,
                    bwd_comms=p.bwd_comms * scale,
                    input_dist_comms=p.input_dist_comms,
                    prefetch_compute=p.prefetch_compute,
                )


def loop_state_bytes(option: ShardingOption, shard: Shard, uses_loop: bool) -> int:
    """fbgemm's CPU loop states of one shard: 8 B per row of a fused shard when the tables use it."""
    if not uses_loop or option.compute_kernel != EmbeddingComputeKernel.FUSED.value:
        return 0  # data-parallel dense tables train with torch's RowWiseAdagrad
    return int(shard.size[0]) * LOOP_STATE_BYTES_PER_ROW


class LoopStateEstimator(ShardEstimator):
    """Adds fbgemm's CPU loop states (8 B per row of each fused shard) when the tables train
    with it; run after TorchRec's storage estimator."""

    def __init__(self, uses_loop: bool) -> None:
        self._uses_loop = uses_loop

    def estimate(self, sharding_options: List[ShardingOption], sharder_data_map=None) -> None:
        for option in sharding_options:
            for shard in option.shards:
                extra = loop_state_bytes(option, shard, self._uses_loop)
                if extra and shard.storage is not None:
                    shard.storage = shard.storage + Storage(hbm=0, ddr=extra, ssd=0)
