"""Per-rank and per-table estimates of a plan: JSON for the plan file, text for people.

Per shard (bytes, on the memory the tables live in: HBM for cuda, DDR for cpu):

* weights = rows × cols × 4 of the sharded table (k-wide for MLET, d-wide for the baseline);
* optimizer = the fused optimizer state TorchRec counts for it (same multiplier as its estimator);
* projections = rows of W (k×d) held with the shard × d × 4 × (weight + grad + dense optimizer
  states), owner-side projection only;
* buffers = the rest of TorchRec's shard estimate (lookup input/output buffers);
* serving = rows × d × 4 × cols / width: the collapsed T·W (n×d) rows of this shard; a column
  shard carries its share, so serving bytes over a table's shards sum to n × d × 4.

Per rank, TorchRec's storage reservation adds the dense part (MLP parameters ×6 heuristic, which
also covers ``--projection-after-comm`` projections) and input (KJT) buffers; on CPU (tables in the
rank's own memory) the training total also counts the process's own overhead
(``process_overhead_bytes``: libraries, input pipeline, activations; measured), which a measured peak
RSS includes and TorchRec does not count.
"""

import math
from typing import Any, Dict, List

from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner.shard_estimators import _get_optimizer_multipler
from torchrec.distributed.types import ShardingType

from mlet_dist.planning.estimators import (
    DENSE_OPTIMIZER_STATES,
    FP32,
    loop_state_bytes,
    mlet_dims,
    process_overhead_bytes,
    projection_bytes,
    projection_rows,
)
from mlet_dist.planning.planner import PlanResult, uses_table_loop
from mlet_dist.planning.topology import GIB

SHORT = {
    ShardingType.TABLE_WISE.value: "TW",
    ShardingType.COLUMN_WISE.value: "CW",
    ShardingType.ROW_WISE.value: "RW",
    ShardingType.TABLE_ROW_WISE.value: "TWRW",
    ShardingType.DATA_PARALLEL.value: "DP",
    ShardingType.TABLE_COLUMN_WISE.value: "TWCW",
}
_RESIDENT = {
    EmbeddingComputeKernel.FUSED.value,
    EmbeddingComputeKernel.DENSE.value,
    EmbeddingComputeKernel.QUANT.value,
}
RANK_FIELDS = ("weights", "optimizer", "projections", "buffers", "tables_total", "host_offload", "serving")


def _ranges(ranks: List[int]) -> str:
    """[0,1,2,5,7,8] -> '0-2,5,7-8'."""
    out: List[str] = []
    ranks = sorted(set(ranks))
    i = 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        out.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ",".join(out)


def estimates(result: PlanResult) -> Dict[str, Any]:
    request = result.request
    kind = request.cluster.memory_kind
    world = request.cluster.world_size
    d = request.embedding_dim
    owner = request.mlet and request.sharding_config.owner_projection
    states = DENSE_OPTIMIZER_STATES[request.dense_optimizer]
    loop = uses_table_loop(request)
    ranks: List[Dict[str, Any]] = [
        {
            "rank": r,
            "node": r // request.cluster.ranks_per_node,
            "shards": 0,
            "tables": [],
            "perf_ms": 0.0,
            **{f: 0 for f in RANK_FIELDS},
        }
        for r in range(world)
    ]
    tables: Dict[str, Dict[str, Any]] = {}
    for option in result.options:
        rows, width = (int(x) for x in option.tensor.shape)
        element = option.tensor.element_size()
        multiplier = _get_optimizer_multipler(
            getattr(option.tensor, "_optimizer_classes", [None])[0], option.tensor.shape
        )
        dims = mlet_dims(option)
        table = {
            "path": option.path,
            "rows": rows,
            "width": width,
            "embedding_dim": d,
            "sharding_type": option.sharding_type,
            "compute_kernel": option.compute_kernel,
            "ranks": sorted({int(s.rank) for s in option.shards}),
            "num_shards": len(option.shards),
            "training_bytes": 0,
            "serving_bytes": rows * d * FP32,
            "perf_ms": 0.0,
        }
        for index, shard in enumerate(option.shards):
            rank = ranks[int(shard.rank)]
            r_rows, r_cols = (int(x) for x in shard.size)
            total = int(getattr(shard.storage, kind))
            proj = projection_bytes(projection_rows(option, shard, dims[0]), d, request.dense_optimizer) if dims else 0
            if option.compute_kernel in _RESIDENT:
                weights = r_rows * r_cols * element
                optim = math.ceil(weights * multiplier) + loop_state_bytes(option, shard, loop)
            else:  # UVM: weights in host memory, a cache in HBM
                weights = optim = 0
                rank["host_offload"] += int(shard.storage.ddr)
            rank["weights"] += weights
            rank["optimizer"] += optim
            rank["projections"] += proj
            rank["buffers"] += max(total - weights - optim - proj, 0)
            rank["tables_total"] += total
            rank["serving"] += r_rows * d * FP32 * r_cols // width
            rank["perf_ms"] += shard.perf.total if shard.perf is not None else 0.0
            rank["shards"] += 1
            label = f"{SHORT.get(option.sharding_type, option.sharding_type)}:{option.name}"
            if len(option.shards) > 1 and option.sharding_type != ShardingType.DATA_PARALLEL.value:
                label += f"[{index + 1}/{len(option.shards)}]"
            rank["tables"].append(label)
            table["training_bytes"] += total
            table["perf_ms"] += shard.perf.total if shard.perf is not None else 0.0
        tables[option.name] = table

    reserved = result.dense_reserved_bytes + result.kjt_reserved_bytes
    for rank, usable in zip(ranks, result.usable_bytes):
        rank["reserved_dense_and_inputs"] = reserved
        rank["training_total"] = rank["tables_total"] + reserved
        if kind == "ddr":  # the tables share the process's memory; on a GPU it is host RAM, not HBM
            rank["process_overhead"] = process_overhead_bytes(request.batch_size)
            rank["training_total"] += rank["process_overhead"]
        rank["usable_for_tables"] = usable
        rank["capacity"] = request.cluster.mem_bytes
        rank["perf_ms"] = round(rank["perf_ms"], 6)
    for table in tables.values():
        table["perf_ms"] = round(table["perf_ms"], 6)

    def spread(values: List[float]) -> Dict[str, float]:
        mean = sum(values) / len(values)
        return {
            "min": min(values),
            "max": max(values),
            "mean": mean,
            "max_over_mean": (max(values) / mean) if mean else 1.0,
        }

    dense_projections = 0 if owner or not request.mlet else (len(tables) * request.inner_dim * d * FP32 * (2 + states))
    return {
        "units": "bytes; perf_ms = TorchRec's per-shard perf estimate summed (ms per iteration)",
        "memory": kind,
        "per_rank": ranks,
        "tables": tables,
        "totals": {
            "tables": len(tables),
            "rows": sum(t["rows"] for t in tables.values()),
            "training_bytes": sum(r["training_total"] for r in ranks),
            "table_shard_bytes": sum(r["tables_total"] for r in ranks),
            "weights_bytes": sum(r["weights"] for r in ranks),
            "optimizer_bytes": sum(r["optimizer"] for r in ranks),
            "projection_bytes": sum(r["projections"] for r in ranks),
            "serving_bytes": sum(t["serving_bytes"] for t in tables.values()),
            "serving_bytes_with_replicas": sum(r["serving"] for r in ranks),
            "dense_projection_bytes_per_rank": dense_projections,
            "capacity_bytes": request.cluster.mem_bytes * world,
        },
        "balance": {
            "training_bytes": spread([float(r["training_total"]) for r in ranks]),
            "perf_ms": spread([float(r["perf_ms"]) for r in ranks]),
        },
        "sharding_types": {
            SHORT.get(t, t): sum(1 for x in tables.values() if x["sharding_type"] == t)
            for t in sorted({x["sharding_type"] for x in tables.values()})
        },
    }


def _size(n: float) -> str:
    for unit, scale in (("G", GIB), ("M", 1 << 20), ("K", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}B"


def _rank_tables(labels: List[str], limit: int = 8) -> str:
    dp = [x for x in labels if x.startswith("DP:")]
    rest = [x for x in labels if not x.startswith("DP:")]
    parts = rest[:limit] + ([f"+{len(rest) - limit} more"] if len(rest) > limit else [])
    if dp:
        parts.append(f"DP x{len(dp)}")
    return " ".join(parts)


def format_report(result: PlanResult, est: Dict[str, Any], title: str = "") -> str:
    request = result.request
    cluster = request.cluster
    spec = request.spec
    totals = est["totals"]
    mem = "HBM" if est["memory"] == "hbm" else "DDR"
    model = (
        f"MLET k={request.inner_dim} -> d={request.embedding_dim}, "
        + (
            "projection on the table owner (d-wide traffic)"
            if request.sharding_config.owner_projection
            else "projection after the all-to-all (k-wide traffic, W replicated as dense DDP params)"
        )
        if request.mlet
        else f"baseline (stock tables at d={request.embedding_dim})"
    )
    offload = any(r["host_offload"] for r in est["per_rank"])
    overhead = est["per_rank"][0].get("process_overhead", 0) if est["per_rank"] else 0
    lines = [
        title or f"Sharding plan for {spec.name}",
        f"tables:    {totals['tables']} ({totals['rows']:,} rows) from {spec.source}",
        f"model:     {model}",
        f"optimizer: tables {request.embedding_optimizer} (fused, in backward); MLPs"
        f"{'' if not request.mlet else ' + projections'} {request.dense_optimizer}; batch {request.batch_size} per rank",
        f"cluster:   {cluster.shape} = {cluster.world_size} {cluster.device} ranks, {_size(cluster.mem_bytes)} "
        f"{mem} each; usable for tables after TorchRec's reservation {_size(min(result.usable_bytes))} "
        f"(dense params x6 {_size(result.dense_reserved_bytes)}, input buffers {_size(result.kjt_reserved_bytes)}"
        f"{f', {request.reserve_fraction:.0%} margin' if est['memory'] == 'hbm' else ''}"
        f"{f', the rank process {_size(overhead)}' if overhead else ''})",
        f"chosen:    {', '.join(f'{k} x{v}' for k, v in est['sharding_types'].items())}",
        "",
        f"per rank ({mem}; train = weights + optimizer + projections + buffers + reserved dense/inputs"
        f"{f' + process overhead {_size(overhead)}' if overhead else ''}; "
        "serve = collapsed n x d x 4; perf = TorchRec estimate, ms/iter)",
        f"{'rank':>5} {'node':>4} {'shards':>6} {'weights':>9} {'optim':>9} {'proj':>9} {'buffers':>9} "
        f"{'train':>9} {'%cap':>5} {'serve':>9} {'perf':>8}{'       host' if offload else ''}  tables",
    ]
    if offload:
        lines.insert(
            -1,
            "UVM tables keep weights + optimizer state in host memory (host column); their HBM "
            "cache is counted in buffers",
        )
    for r in est["per_rank"]:
        host = f" {_size(r['host_offload']):>10}" if offload else ""
        lines.append(
            f"{r['rank']:>5} {r['node']:>4} {r['shards']:>6} {_size(r['weights']):>9} {_size(r['optimizer']):>9} "
            f"{_size(r['projections']):>9} {_size(r['buffers']):>9} {_size(r['training_total']):>9} "
            f"{100 * r['training_total'] / r['capacity']:>4.0f}% {_size(r['serving']):>9} {r['perf_ms']:>8.3f}"
            f"{host}  {_rank_tables(r['tables'])}"
        )
    bal_mem, bal_perf = est["balance"]["training_bytes"], est["balance"]["perf_ms"]
    lines += [
        "",
        f"balance:   train memory max {_size(bal_mem['max'])} / mean {_size(bal_mem['mean'])} "
        f"(x{bal_mem['max_over_mean']:.2f}), min {_size(bal_mem['min'])}; perf max {bal_perf['max']:.3f} / "
        f"mean {bal_perf['mean']:.3f} ms (x{bal_perf['max_over_mean']:.2f})",
        f"totals:    training {_size(totals['training_bytes'])} of {_size(totals['capacity_bytes'])} "
        f"(weights {_size(totals['weights_bytes'])}, optimizer {_size(totals['optimizer_bytes'])}, "
        f"projections {_size(totals['projection_bytes'])}); serving after collapse {_size(totals['serving_bytes'])}"
        + (
            f" ({_size(totals['serving_bytes_with_replicas'])} with data-parallel replicas)"
            if totals["serving_bytes_with_replicas"] > 1.005 * totals["serving_bytes"]
            else ""
        ),
        "",
        "per table",
        f"{'table':<8} {'rows':>13} {'type':<15} {'kernel':<18} {'shards':>6} {'ranks':<14} {'train':>9} "
        f"{'serve':>9} {'perf':>8}",
    ]
    for name, t in est["tables"].items():
        ranks = _ranges(t["ranks"])
        lines.append(
            f"{name:<8} {t['rows']:>13,} {t['sharding_type']:<15} {t['compute_kernel']:<18} {t['num_shards']:>6} "
            f"{ranks if len(ranks) <= 14 else ranks[:11] + '...':<14} {_size(t['training_bytes']):>9} "
            f"{_size(t['serving_bytes']):>9} {t['perf_ms']:>8.3f}"
        )
    return "\n".join(lines) + "\n"
