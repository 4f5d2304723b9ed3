"""Sharding plans as JSON files, in the layout of TorchRec's ``ModuleShardingPlan._serialize()``
(sharding_type, compute_kernel, ranks, shards with offsets/sizes/placement), plus the topology
the plan was made for, so that a mismatch is caught before training starts.

    {"format_version": 1,
     "topology": {"world_size": 16, "local_world_size": 8, "compute_device": "cuda", ...},
     "plan": {"<module path>": {"<table>": {"sharding_type": ..., "compute_kernel": ...,
                                            "ranks": [...], "shards": [...]}}},
     ... any extra keys (tables, estimates) are kept but not needed to load}

Every other ParameterSharding field (cache_params, enforce_hbm, stochastic_rounding,
bounds_check_mode, output_dtype, key_value_params, and any field a later TorchRec adds) is stored
beside those keys when it is set, encoded from its type annotation: enums by name, dataclasses and
named tuples as objects, tuples/sets as lists. A type the codec does not know stops the save with
its field path instead of writing a plan that reloads without it. The one exception is
``cache_params.stats``: a live statistics object the planner reads to size the cache, not a
setting of the sharded table, so it is not stored.
"""

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from torch import nn
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.types import (
    CacheParams,
    EmbeddingModuleShardingPlan,
    ParameterSharding,
    ShardingPlan,
)

from data_prep.safe_json import read_json_file
from mlet_dist.cli_common import ranks_phrase
from mlet_dist.errors import UserError

PLAN_FORMAT_VERSION = 1
PathLike = Union[str, Path]


class PlanMismatchError(UserError, ValueError):
    """A plan file that does not fit the model or the job; the message names the mismatch (a
    UserError: the entry points print it as one ``error:`` line)."""


# Stored by TorchRec's ``_serialize()`` layout (sharding_spec as "shards").
SERIALIZED_FIELDS = ("sharding_type", "compute_kernel", "ranks", "sharding_spec")
# (class, field) pairs deliberately not stored; see the module docstring.
NOT_STORED = {(CacheParams, "stats")}


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _is_named_tuple(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def _record_fields(cls: Any) -> List[str]:
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return list(cls._fields)


def _encode(value: Any, hint: Any, where: str) -> Any:
    """JSON value for ``value`` of annotated type ``hint``; raises TypeError on unknown types."""
    hint = _unwrap_optional(hint)
    if value is None:
        return None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value.name
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or _is_named_tuple(hint)):
        hints = typing.get_type_hints(hint)
        return {
            name: _encode(getattr(value, name), hints[name], f"{where}.{name}")
            for name in _record_fields(hint)
            if (hint, name) not in NOT_STORED
        }
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list, frozenset, set):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return [_encode(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        item = args[0] if args else Any
        items = [_encode(v, item, f"{where}[]") for v in value]
        return sorted(items, key=json.dumps) if origin in (frozenset, set) else items
    if origin is dict and args and args[0] is str:
        return {k: _encode(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if hint in (bool, int, float, str) and isinstance(value, hint):
        return value
    raise TypeError(
        f"plan_io cannot store {where} (type {hint!r}, value {value!r}): extend the codec in "
        "mlet_dist/planning/plan_io.py rather than write a plan that reloads without it"
    )


def _decode(data: Any, hint: Any, where: str) -> Any:
    hint = _unwrap_optional(hint)
    if data is None:
        return None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint[data]
        except KeyError:
            raise PlanMismatchError(f"{where}: {data!r} is not a {hint.__name__} ({[m.name for m in hint]})")
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or _is_named_tuple(hint)):
        hints = typing.get_type_hints(hint)
        unknown = sorted(set(data) - set(_record_fields(hint)))
        if unknown:
            raise PlanMismatchError(f"{where}: unknown {hint.__name__} fields {unknown} (plan from another TorchRec?)")
        return hint(**{k: _decode(v, hints[k], f"{where}.{k}") for k, v in data.items()})
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list, frozenset, set):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return tuple(_decode(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(data, args)))
        item = args[0] if args else Any
        return origin(_decode(v, item, f"{where}[]") for v in data)
    if origin is dict:
        return {k: _decode(v, args[1], f"{where}.{k}") for k, v in data.items()}
    if hint is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    return data


def _extra_fields() -> Dict[str, Any]:
    """ParameterSharding fields beyond the ``_serialize()`` layout, with their type hints."""
    hints = typing.get_type_hints(ParameterSharding)
    return {f.name: hints[f.name] for f in dataclasses.fields(ParameterSharding) if f.name not in SERIALIZED_FIELDS}


def _module_plan_dict(module_plan: Any) -> Dict[str, Any]:
    out = module_plan._serialize()
    extra = _extra_fields()
    for table, ps in module_plan.items():
        for name, hint in extra.items():
            value = getattr(ps, name)
            if value is not None:
                out[table][name] = _encode(value, hint, f"{table}.{name}")
    return out


def plan_to_dict(plan: ShardingPlan, topology: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return {
        "format_version": PLAN_FORMAT_VERSION,
        "topology": dict(topology),
        "plan": {path: _module_plan_dict(module_plan) for path, module_plan in plan.plan.items()},
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
    known = {"sharding_type", "compute_kernel", "ranks", "shards", *_extra_fields()}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise PlanMismatchError(
            f"plan entry has unknown fields {unknown}: made by another TorchRec version? "
            f"this one's ParameterSharding knows {sorted(known)}"
        )
    return ParameterSharding(
        sharding_type=entry["sharding_type"],
        compute_kernel=entry["compute_kernel"],
        ranks=list(entry["ranks"]) if entry.get("ranks") is not None else None,
        sharding_spec=spec,
        **{name: _decode(entry.get(name), hint, name) for name, hint in _extra_fields().items()},
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
    data = read_json_file(path, "plan file", error=PlanMismatchError)
    return plan_from_dict(data), data


def load_checked_plan(path: PathLike, model: nn.Module, world_size: int, device_type: str) -> ShardingPlan:
    """The plan in ``path``, checked against ``model`` and this job before anything is sharded:
    a file that is no plan, names a compute kernel TorchRec lacks, or does not fit stops every
    rank with one line instead of failing inside DMP."""
    try:
        plan, data = load_plan(path)
    except PlanMismatchError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # valid JSON, not a plan
        raise PlanMismatchError(
            f"{path} is not a sharding plan (mlet-plan or a run's plan.json): {type(err).__name__}: {err}"
        ) from None
    _check_compute_kernels(plan, str(path))
    check_plan_fits(plan, model, world_size, device_type, data.get("topology"), str(path))
    return plan


def _check_compute_kernels(plan: ShardingPlan, source: str) -> None:
    kernels = {k.value for k in EmbeddingComputeKernel}
    for module_plan in plan.plan.values():
        for table, sharding in module_plan.items():
            if sharding.compute_kernel not in kernels:
                raise PlanMismatchError(
                    f"{source}: table {table!r} names compute kernel "
                    f"{sharding.compute_kernel!r}; TorchRec knows {sorted(kernels)}"
                )


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
    plan: ShardingPlan,
    model: nn.Module,
    world_size: int,
    device_type: str,
    topology: Optional[Dict[str, Any]] = None,
    source: str = "plan",
) -> None:
    """Fail before training, naming the first thing that does not match."""
    if topology is not None and topology.get("world_size") not in (None, world_size):
        raise PlanMismatchError(
            f"{source} was made for world size {topology['world_size']} "
            f"({topology.get('world_size', 0) // max(topology.get('local_world_size', 1), 1)}x"
            f"{topology.get('local_world_size')}), but this job has {ranks_phrase(world_size)}: launch with "
            f"that many ranks or re-plan with `mlet-plan --world NxM`"
        )
    for path, module_plan in plan.plan.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise PlanMismatchError(f"{source} names module {path!r}, which the model does not have")
        tables = _shardable_tables(module)
        planned = set(module_plan.keys())
        if planned != set(tables):
            raise PlanMismatchError(
                f"{source}: module {path!r} has tables {sorted(tables)} but the plan places "
                f"{sorted(planned)} (missing {sorted(set(tables) - planned)}, "
                f"unknown {sorted(planned - set(tables))})"
            )
        for table, ps in module_plan.items():
            _check_parameter_sharding(source, path, table, ps, tables[table], world_size, device_type)


def _check_parameter_sharding(
    source: str,
    path: str,
    table: str,
    ps: ParameterSharding,
    shape: Tuple[int, int],
    world_size: int,
    device_type: str,
) -> None:
    where = f"{source}: {path}.{table}"
    for rank in ps.ranks or []:
        if rank >= world_size:
            raise PlanMismatchError(f"{where} is placed on rank {rank}, but the job has {ranks_phrase(world_size)}")
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
