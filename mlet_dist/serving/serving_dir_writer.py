"""Write a serving directory from a trained (sharded) model: owner-side collapse, DCP checkpoint of
the stock d-wide model, a serving plan for the serving topology, and the manifest.

Collective: every rank of the training job calls ``write_serving_dir`` with its own model. Each rank
writes only the d-wide rows it computed; the directory is assembled in ``OUT.partial`` and renamed
to ``OUT`` by rank 0 once complete (manifest last), so ``OUT`` is either absent, the previous
serving directory (only with ``overwrite``), or complete.
"""

import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint import FileSystemWriter

from data_prep.progress import StageLog
from mlet_dist.distributed.exact_save import ExactStorageSavePlanner
from mlet_dist.distributed.collapse import DEFAULT_CHUNK_ROWS, CollapseStats, collapse_state_dict
from mlet_dist.models.dlrm import bottom_mlp_output_of
from mlet_dist.models.ranking import ModelConfig
from mlet_dist.planning.plan_io import save_plan
from mlet_dist.serving.manifest import (
    CHECKPOINT_DIR,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PLAN_FILE,
    ServingDirError,
    dtype_name,
    file_entries,
    sha256_file,
)
from mlet_dist.serving.model import (
    EBC_PATH,
    ServingModelConfig,
    ServingTopology,
    expected_state_shapes,
    plan_serving,
)

PathLike = Union[str, Path]


@dataclass
class WrittenServingDir:
    path: Path
    manifest: Dict[str, Any]
    stats: CollapseStats


def _rank_world() -> "tuple[int, int]":
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _same_on_all(value: Any) -> Any:
    """Rank 0's value on every rank (an error found on rank 0 stops everyone, no hang)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _output_problem(out_dir: Path, overwrite: bool) -> Optional[str]:
    if not out_dir.exists():
        return None
    if not overwrite:
        return f"output {out_dir} already exists; pass overwrite=True (--overwrite) to replace it"
    if out_dir.is_dir() and ((out_dir / MANIFEST).is_file() or not any(out_dir.iterdir())):
        return None
    return f"refusing to overwrite {out_dir}: it is not a serving directory (no {MANIFEST})"


def dataset_section(data: Optional[PathLike]) -> Dict[str, Any]:
    """The parts of a prepared dataset's meta.json that serving must agree with, and its sha256."""
    if data is None:
        return {}
    from data_prep.dataset_format import META_FILE, read_meta

    root = Path(data)
    meta = read_meta(root)
    meta_path = root / META_FILE if root.is_dir() else root
    return {
        "data_dir": str(root.resolve()),
        "meta_sha256": sha256_file(meta_path),
        "dataset": meta.get("dataset"),
        "label": meta["label"],
        "dense_features": list(meta["dense_features"]),
        "sparse_features": list(meta["sparse_features"]),
        "table_sizes": {k: int(v) for k, v in meta["table_sizes"].items()},
        "split_rows": {s: int(v["rows"]) for s, v in meta["splits"].items()},
    }


def _check_state(state: Mapping[str, Any], config: ServingModelConfig) -> Dict[str, Dict[str, Any]]:
    """key -> {"shape", "dtype"}; the collapsed state must be exactly the stock model's."""
    expected = expected_state_shapes(config)
    if set(state) != set(expected):
        raise ServingDirError(
            "the collapsed model does not match the serving model config: missing "
            f"{sorted(set(expected) - set(state))[:5]}, unexpected {sorted(set(state) - set(expected))[:5]} "
            "(was the model config built from the same training config and dataset?)"
        )
    keys = {}
    for key, value in state.items():
        shape = list(value.size())
        if shape != expected[key]:
            raise ServingDirError(f"{key}: collapsed shape {shape}, the serving model config expects {expected[key]}")
        keys[key] = {"shape": shape, "dtype": dtype_name(value.dtype)}
    return keys


def _training_plan(model: nn.Module) -> Dict[str, str]:
    plan = getattr(model, "plan", None)
    out: Dict[str, str] = {}
    for module_plan in getattr(plan, "plan", {}).values():
        for table, ps in module_plan.items():
            out[table] = ps.sharding_type
    return out


def _local_files(checkpoint: Path, rank: int) -> List[str]:
    return sorted(p.name for p in checkpoint.glob(f"__{rank}_*.distcp"))


def write_serving_dir(
    model: nn.Module,
    out_dir: PathLike,
    model_config: ServingModelConfig,
    dataset: Optional[PathLike] = None,
    source: Optional[Dict[str, Any]] = None,
    serving_topology: Optional[ServingTopology] = None,
    serving_sharding: str = "auto",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
    log: Optional[StageLog] = None,
) -> WrittenServingDir:
    """Collapse ``model`` (DMP-sharded or plain; MLET or already d-wide) on the ranks that hold
    its shards and write a serving directory at ``out_dir``. Returns the same on every rank.
    ``log``: a line per long stage (mlet-collapse's progress); none by default."""
    log = log or StageLog("", enabled=False)
    rank, world = _rank_world()
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    problem = _same_on_all(_output_problem(out_dir, overwrite) if rank == 0 else None)
    if problem:
        raise ServingDirError(problem)
    topology = serving_topology or ServingTopology(world_size=world, compute_device=_device_type(model))
    with log.stage("plan the serving model"):
        plan = plan_serving(model_config, topology, serving_sharding)  # every rank: fails together
    ends = bottom_mlp_output_of(model)
    if ends is not None and ends != model_config.bottom_mlp_output:  # same on every rank: fails together
        raise ServingDirError(
            f"the model's bottom MLP ends {ends}, the serving model config says "
            f"bottom_mlp_output={model_config.bottom_mlp_output!r}: it would serve another function"
        )

    with log.stage("collapse T·W"):
        state, stats = collapse_state_dict(
            model.state_dict(), chunk_rows=chunk_rows, on_table=lambda done, total: log.tick(done, total, "tables")
        )
    keys = _check_state(state, model_config)

    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        (staging / CHECKPOINT_DIR).mkdir(parents=True)
    _barrier()
    with log.stage("write the d-wide checkpoint"):
        dcp.save(
            state, storage_writer=FileSystemWriter(str(staging / CHECKPOINT_DIR)), planner=ExactStorageSavePlanner()
        )
        _barrier()
    with log.stage("sha256 of the written files"):
        mine = file_entries(staging / CHECKPOINT_DIR, _local_files(staging / CHECKPOINT_DIR, rank))
    gathered: List[Optional[Dict[str, Any]]] = [mine]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)

    manifest: Dict[str, Any] = {}
    error: Optional[str] = None
    if rank == 0:
        try:
            manifest = _write(
                staging,
                out_dir,
                plan,
                topology,
                model_config,
                keys,
                gathered,
                stats,
                dataset,
                source,
                world,
                _training_plan(model),
                chunk_rows,
                serving_sharding,
            )
        except Exception as err:  # tell the other ranks instead of leaving them in a barrier
            error = f"writing the serving directory failed on rank 0: {err}"
    error = _same_on_all(error)
    if error:
        raise ServingDirError(error)
    manifest = _same_on_all(manifest)
    return WrittenServingDir(out_dir, manifest, stats)


def _device_type(model: nn.Module) -> str:
    for value in model.state_dict().values():
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                return shard.tensor.device.type
        elif isinstance(value, torch.Tensor):
            return value.device.type
    return "cpu"


def _write(
    staging: Path,
    out_dir: Path,
    plan: Any,
    topology: ServingTopology,
    config: ServingModelConfig,
    keys: Dict[str, Dict[str, Any]],
    gathered: List[Optional[Dict[str, Any]]],
    stats: CollapseStats,
    dataset: Optional[PathLike],
    source: Optional[Dict[str, Any]],
    world: int,
    training_plan: Dict[str, str],
    chunk_rows: int,
    serving_sharding: str,
) -> Dict[str, Any]:
    import torchrec

    save_plan(
        staging / PLAN_FILE,
        plan,
        topology.to_dict(),
        tables=[t.name for t in config.tables],
        model="serving (d-wide, stock TorchRec EmbeddingBagCollection)",
    )
    files: Dict[str, Any] = {}
    for part in gathered:
        files.update({f"{CHECKPOINT_DIR}/{name}": entry for name, entry in (part or {}).items()})
    ckpt = staging / CHECKPOINT_DIR
    extra = [p.name for p in ckpt.iterdir() if f"{CHECKPOINT_DIR}/{p.name}" not in files]
    files.update({f"{CHECKPOINT_DIR}/{name}": e for name, e in file_entries(ckpt, extra).items()})
    files.update(file_entries(staging, [PLAN_FILE]))
    table_keys = {t.name: f"{EBC_PATH}.embedding_bags.{t.name}.weight" for t in config.tables}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_unix": time.time(),
        "created_by": {
            "torch": torch.__version__,
            "torchrec": getattr(torchrec, "__version__", "unknown"),
            "host": platform.node(),
        },
        "model": config.to_dict(),
        "tables": [
            {
                "name": t.name,
                "num_embeddings": t.num_embeddings,
                "embedding_dim": t.embedding_dim,
                "inner_dim": t.inner_dim,
                "feature_names": t.feature_names,
                "key": table_keys[t.name],
                "training_sharding": training_plan.get(t.name),
            }
            for t in config.tables
        ],
        "dense_keys": sorted(k for k in keys if k not in set(table_keys.values())),
        "checkpoint": {"dir": CHECKPOINT_DIR, "format": "torch.distributed.checkpoint", "keys": keys},
        "serving_topology": topology.to_dict(),
        "serving_plan": {"file": PLAN_FILE, "sharding": serving_sharding},
        "source": {"world_size": world, **(source or {})},
        "dataset": dataset_section(dataset),
        "collapse": {
            "chunk_rows": chunk_rows,
            "k_bytes_read": stats.total_k_bytes,
            "d_bytes_written": stats.total_d_bytes,
            "seconds": stats.max_seconds,
            "gb_per_s": stats.gb_per_s,
            "tables": len(stats.tables),
        },
        "files": files,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return manifest


def write_run_serving_dir(
    model: nn.Module,
    model_config: ModelConfig,
    data: PathLike,
    run_dir: PathLike,
    source: Optional[Dict[str, Any]] = None,
    serving_topology: Optional[ServingTopology] = None,
    serving_sharding: str = "auto",
    overwrite: bool = True,
) -> WrittenServingDir:
    """``write_serving_dir`` for a training run, at ``run_dir / "serving"``: the serving model is
    the run's ModelConfig on the dataset's tables (nothing of how it was trained)."""
    from mlet_dist.data.parquet_batches import DatasetMeta

    meta = DatasetMeta.load(data)
    config = ServingModelConfig.from_model(model_config, meta.table_sizes, len(meta.dense_features), meta.pooling)
    return write_serving_dir(
        model,
        Path(run_dir) / "serving",
        config,
        dataset=data,
        source={"run_dir": str(Path(run_dir).resolve()), **(source or {})},
        serving_topology=serving_topology,
        serving_sharding=serving_sharding,
        overwrite=overwrite,
    )
