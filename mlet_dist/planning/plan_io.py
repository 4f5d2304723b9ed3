"""Sharding plans as JSON files, in the layout of TorchRec's ``ModuleShardingPlan._serialize()``
(sharding_type, compute_kernel, ranks, shards with offsets/sizes/placement), plus the topology
the plan was made for, so that a mismatch is caught before training starts.

    {"format_version": 1,
     "topology": {"world_size": 16, "local_world_size": 8, "compute_device": "cuda", ...},
     "plan": {"<module path>": {"<table>": {"sharding_type": ..., "compute_kernel": ...,
                                            "ranks": [...], "shards": [...]}}},
     ... any extra keys (tables, estimates) are kept but not needed to load}
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from torch import nn
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding, ShardingPlan

PLAN_FORMAT_VERSION = 1
PathLike = Union[str, Path]


class PlanMismatchError(ValueError):
    """A plan file that does not fit the model or the job; the message names the mismatch."""


def plan_to_dict(plan: ShardingPlan, topology: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return {
        "format_version": PLAN_FORMAT_VERSION,
        "topology": dict(topology),
        "plan": {path: module_plan._serialize() for path, module_plan in plan.plan.items()},
        **extra,
    }


def _parameter_sharding(entry: Dict[str, Any]) -> ParameterSharding:
    shards = entry.get("shards")
    spec = None
    if shards:
        spec = EnumerableShardingSpec(
            [
                ShardMetadata(
                    shard_offsets=list(s["shard_offsets"]),
                    shard_sizes=list(s["shard_sizes"]),
                    placement=s["placement"],
                )
                for s in shards
            ]
        )
    return ParameterSharding(
        sharding_type=entry["sharding_type"],
        compute_kernel=entry["compute_kernel"],
        ranks=list(entry["ranks"]) if entry.get("ranks") is not None else None,
        sharding_spec=spec,
    )


def plan_from_dict(data: Dict[str, Any]) -> ShardingPlan:
    if data.get("format_version") != PLAN_FORMAT_VERSION:
        raise PlanMismatchError(
            f"plan format_version {data.get('format_version')!r} is not {PLAN_FORMAT_VERSION}; "
            "re-create the plan with mlet-plan"
        )
    return ShardingPlan(
        plan={
            path: EmbeddingModuleShardingPlan({t: _parameter_sharding(e) for t, e in tables.items()})
            for path, tables in data["plan"].items()
        }
    )


def save_plan(path: PathLike, plan: ShardingPlan, topology: Dict[str, Any], **extra: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(plan_to_dict(plan, topology, **extra), indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def load_plan(path: PathLike) -> Tuple[ShardingPlan, Dict[str, Any]]:
    """(plan, whole file as a dict). JSON only: nothing executable is read."""
    path = Path(path)
    if not path.is_file():
        raise PlanMismatchError(f"plan file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PlanMismatchError(f"plan file {path} is not valid JSON: {err}")
    return plan_from_dict(data), data


def _shardable_tables(module: nn.Module) -> Dict[str, Tuple[int, int]]:
    """table -> (rows, stored width) of the tables a sharder would place."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection

    if isinstance(module, MLETEmbeddingBagCollection):
        return {c.name: (c.num_embeddings, c.inner_dim) for c in module.mlet_configs()}
    if isinstance(module, EmbeddingBagCollection):
        return {c.name: (c.num_embeddings, c.embedding_dim) for c in module.embedding_bag_configs()}
    raise PlanMismatchError(f"module of type {type(module).__name__} holds no shardable tables")


def check_plan_fits(
    plan: ShardingPlan, model: nn.Module, world_size: int, device_type: str,
    topology: Optional[Dict[str, Any]] = None, source: str = "plan",
) -> None:
    """Fail before training, naming the first thing that does not match."""
    if topology is not None and topology.get("world_size") not in (None, world_size):
        raise PlanMismatchError(
            f"{source} was made for world size {topology['world_size']} "
            f"({topology.get('world_size', 0) // max(topology.get('local_world_size', 1), 1)}x"
            f"{topology.get('local_world_size')}), but this job has {world_size} ranks: launch with "
            f"that many ranks or re-plan with `mlet-plan --world NxM`"
        )
    for path, module_plan in plan.plan.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise PlanMismatchError(f"{source} names module {path!r}, which the model does not have")
        tables = _shardable_tables(module)
        planned = set(module_plan.keys())  # type: ignore[attr-defined]
        if planned != set(tables):
            raise PlanMismatchError(
                f"{source}: module {path!r} has tables {sorted(tables)} but the plan places "
                f"{sorted(planned)} (missing {sorted(set(tables) - planned)}, "
                f"unknown {sorted(planned - set(tables))})"
            )
        for table, ps in module_plan.items():  # type: ignore[attr-defined]
            _check_parameter_sharding(source, path, table, ps, tables[table], world_size, device_type)


def _check_parameter_sharding(
    source: str, path: str, table: str, ps: ParameterSharding, shape: Tuple[int, int],
    world_size: int, device_type: str,
) -> None:
    where = f"{source}: {path}.{table}"
    for rank in ps.ranks or []:
        if rank >= world_size:
            raise PlanMismatchError(f"{where} is placed on rank {rank}, but the job has {world_size} ranks")
    spec = ps.sharding_spec
    if not isinstance(spec, EnumerableShardingSpec):
        return
    area = 0
    for shard in spec.shards:
        placement = shard.placement
        if placement is not None and placement.device().type != device_type:
            raise PlanMismatchError(
                f"{where} is placed on {placement.device().type} but this job runs on {device_type}: "
                f"re-plan with `mlet-plan --device {device_type}`"
            )
        for offset, size, full in zip(shard.shard_offsets, shard.shard_sizes, shape):
            if offset + size > full:
                raise PlanMismatchError(
                    f"{where}: shard {list(shard.shard_offsets)}+{list(shard.shard_sizes)} exceeds the "
                    f"table shape {list(shape)} (was the plan made with another k or vocabulary?)"
                )
        area += shard.shard_sizes[0] * shard.shard_sizes[1]
    if area != shape[0] * shape[1]:
        raise PlanMismatchError(
            f"{where}: shards cover {area} cells but the table is {shape[0]}x{shape[1]}; "
            "the plan was made for other table sizes: re-plan from this dataset's meta.json"
        )


def plan_summary_rows(plan: ShardingPlan) -> List[Tuple[str, str, str, str]]:
    """(table, sharding type, kernel, ranks) rows for logs."""
    rows = []
    for path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():  # type: ignore[attr-defined]
            rows.append((f"{path}.{table}", ps.sharding_type, ps.compute_kernel, str(ps.ranks)))
    return rows

