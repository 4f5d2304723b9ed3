"""mlet-collapse: turn a training checkpoint into a serving directory, on any number of ranks.

    torchrun --nproc-per-node 2 -m mlet_dist.serving.collapse_cli --run-dir RUN --out RUN/serving
    mlet-collapse --run-dir RUN --out SERVING --serve-world-size 4 --serve-device cuda

The model is rebuilt from the run's config.json (its model section, a ModelConfig; the dataset
and sharding beside it), never by replaying the run's command line through today's training
parser. A run dir without config.json predates it (commit 7d75c74) and is refused in one line.
It is sharded over this job's ranks by the planner (the collapse job may be smaller or larger than the
training job: DCP reshards the checkpoint), loaded from the checkpoint, collapsed owner-side
(``mlet_dist.distributed.collapse``) and written with ``write_serving_dir``.

Checkpoint: ``--checkpoint DIR`` (a DCP checkpoint holding the model's state dict, at top level
as best_model/step-N, or under "model." as the training checkpoints checkpoints/step-N), or by
default the run's selected model: best_model/step-<selected_step> from summary.json when it
exists, else the newest checkpoints/step-N. It is verified against its ``checksums.json`` as
resume verifies it; a damaged one (or one without the file) is refused and nothing is written.
"""

import argparse
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn

from data_prep.progress import StageLog, add_stage_progress_flag, stage_lines_wanted
from data_prep.safe_json import read_json_file
from mlet_dist.config_flags import DefaultsHelpFormatter
from mlet_dist.config_io import from_jsonable
from mlet_dist.distributed.collapse import DEFAULT_CHUNK_ROWS
from mlet_dist.serving.manifest import ServingDirError
from mlet_dist.serving.model import SERVING_SHARDING_CHOICES, ServingModelConfig, ServingTopology
from mlet_dist.serving.no_random_init import NoRandomInit
from mlet_dist.distributed.safe_dcp import SafeFileSystemReader, UnsafeCheckpointError, safe_read_metadata
from mlet_dist.distributed.sharding import ShardingConfig
from mlet_dist.models.ranking import ModelConfig
from mlet_dist.errors import user_error_exit
from mlet_dist.training.checkpoint_digest import CheckpointCorrupt, agreed_verdict, verify_share

_STEP = re.compile(r"^step-(\d+)$")


def build_parser() -> argparse.ArgumentParser:
    from mlet_dist.distributed.sharding import SHARDING_CHOICES

    p = argparse.ArgumentParser(
        prog="mlet-collapse",
        description="Collapse a trained MLET model (T·W per table, on the ranks that hold the shards) "
        "into a serving directory: DCP checkpoint of a stock d-wide TorchRec model, serving plan, manifest.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--run-dir", type=Path, required=True, help="training run directory (metrics.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="serving directory to write")
    p.add_argument("--checkpoint", type=Path, default=None, help="DCP checkpoint; default: the run's selected model")
    p.add_argument("--data", type=Path, default=None, help="dataset dir, if not where the run's --data points")
    p.add_argument(
        "--sharding",
        choices=SHARDING_CHOICES,
        default=None,
        help="how to shard the k-wide model for the collapse (default: as in training)",
    )
    p.add_argument("--serve-world-size", type=int, default=None, help="ranks of the serving job (default: this job's)")
    p.add_argument("--serve-local-world-size", type=int, default=None, help="serving ranks per host")
    p.add_argument("--serve-device", choices=["cpu", "cuda"], default=None, help="default: this job's device")
    p.add_argument(
        "--serve-sharding",
        choices=SERVING_SHARDING_CHOICES,
        default="auto",
        help="sharding type of the serving plan (auto: TorchRec's planner chooses)",
    )
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per matmul chunk")
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing serving directory")
    add_stage_progress_flag(p)
    return p


CONFIG_JSON = "config.json"
FIRST_WITH_CONFIG_JSON = "commit 7d75c74 (issue 14, 2026-11-30)"


@dataclass
class RunModel:
    """What mlet-collapse needs of a run: its model (config.json's model section), its dataset,
    and how it was sharded. No TrainConfig: the training flags may have changed since."""

    model: ModelConfig
    data: Path
    sharding: ShardingConfig


def _model_section(tree: Dict[str, Any]) -> Dict[str, Any]:
    """The keys of a run's config tree that are ModelConfig's (TrainConfig extends it)."""
    return {f.name: tree[f.name] for f in dataclasses.fields(ModelConfig) if f.name in tree}


def run_model(run_dir: Path, data: Optional[Path]) -> RunModel:
    """The run's model, dataset and sharding from its config.json (what the run was, whatever
    today's flags are called); ``data`` overrides the dataset it names."""
    path = run_dir / CONFIG_JSON
    if not path.is_file() and not (run_dir / "metrics.jsonl").is_file():
        raise ValueError(f"{run_dir} is not a training run directory (no {CONFIG_JSON}, no metrics.jsonl)")
    if not path.is_file():
        raise ValueError(
            f"{run_dir} has no {CONFIG_JSON}: it was trained by a version older than {FIRST_WITH_CONFIG_JSON}, "
            f"the first to save it, and mlet-collapse rebuilds the model only from it; collapse it with the "
            "version that trained it"
        )
    tree = read_json_file(path, "config")
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected an object, got {type(tree).__name__}")
    model = from_jsonable(ModelConfig, _model_section(tree), where=str(path))
    sharding = from_jsonable(ShardingConfig, tree.get("sharding", {}), where=f"{path}.sharding")
    if data is None and tree.get("data") is None:
        raise ValueError(f"{path} names no dataset; pass --data DIR")
    run = RunModel(model, Path(data if data is not None else tree["data"]), sharding)
    if not (run.data / "meta.json").is_file():
        raise ValueError(f"the run's dataset {run.data} has no meta.json; pass --data DIR")
    if not model.embedding.mlet:
        print("note: a baseline run (no MLET tables): its d-wide tables are exported as they are", file=sys.stderr)
    return run


def select_checkpoint(run_dir: Path, explicit: Optional[Path]) -> Tuple[Path, str]:
    """(checkpoint dir, why it was chosen)."""
    if explicit is not None:
        if not (explicit / ".metadata").is_file():
            raise ValueError(f"{explicit} is not a DCP checkpoint (no .metadata)")
        return explicit, "given"
    summary = run_dir / "summary.json"
    if summary.is_file():
        selected = json.loads(summary.read_text())
        step, epoch = selected.get("selected_step"), selected.get("selected_epoch")
        candidates = [
            (run_dir / "best_model" / f"step-{step}", f"best point, step {step} (summary.json)"),
            (run_dir / "best_model" / f"epoch-{epoch}", f"best epoch {epoch} (summary.json)"),
        ]
        for best, why in candidates:
            if (best / ".metadata").is_file():
                return best, why
    steps = sorted(
        (p for p in (run_dir / "checkpoints").glob("step-*") if _STEP.match(p.name) and (p / ".metadata").is_file()),
        key=lambda p: int(_STEP.match(p.name).group(1)),  # type: ignore[union-attr]
    )
    if steps:
        return steps[-1], "newest training checkpoint"
    raise ValueError(f"no checkpoint in {run_dir} (best_model/step-N or checkpoints/step-N); pass --checkpoint")


def checkpoint_prefix(checkpoint: Path, keys: Sequence[str]) -> str:
    """ "" if the model keys are at top level, "model" if under model. (training checkpoints)."""
    stored = set(safe_read_metadata(checkpoint / ".metadata").state_dict_metadata)
    for prefix in ("", "model"):
        if all((f"{prefix}.{k}" if prefix else k) in stored for k in keys):
            return prefix
    sample = sorted(k for k in keys if k not in stored)[:3]
    raise ValueError(
        f"{checkpoint} does not hold this model's weights (e.g. {sample} are missing, also under 'model.'): "
        "was it written by this run, with the same --model/-k/-d?"
    )


def verify_checkpoint(checkpoint: Path, rank: int, world_size: int) -> None:
    """The check resume makes (collective): a checkpoint resume would skip as damaged must not
    become a serving directory with a fresh, valid manifest."""
    verdict = agreed_verdict(verify_share(checkpoint, rank, world_size))
    if verdict:
        raise CheckpointCorrupt(
            f"checkpoint {checkpoint} is damaged, nothing written: {verdict}; pass --checkpoint with an intact one"
        )


def load_checkpoint(model: nn.Module, checkpoint: Path) -> None:
    state = model.state_dict()
    prefix = checkpoint_prefix(checkpoint, list(state))
    target: Dict[str, Any] = {prefix: state} if prefix else state
    try:
        dcp.load(target, storage_reader=SafeFileSystemReader(checkpoint))
    except CheckpointException as err:  # a BaseException: make it an error message
        raise ValueError(f"cannot load {checkpoint}: {str(err).strip().splitlines()[-1][:400]}") from err
    model.load_state_dict(state)


def collapse_summary(collapse: Dict[str, Any]) -> str:
    """What the collapse did, for the closing line. A baseline run reads no k-wide table: a rate
    of 0 bytes in ~0 s ("0.00 GB/s") would read as a very slow collapse, so none is given."""
    if not collapse["k_bytes_read"]:
        return "nothing to collapse (no MLET tables)"
    return (
        f"collapse read {collapse['k_bytes_read'] / 1e6:.1f} MB of k-wide tables in {collapse['seconds']:.2f}s "
        f"({collapse['gb_per_s']:.2f} GB/s)"
    )


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from mlet_dist.data.parquet_batches import DatasetMeta
    from mlet_dist.distributed.env import init_distributed, shutdown_distributed
    from mlet_dist.distributed.sharding import shard_model
    from mlet_dist.serving.serving_dir_writer import write_serving_dir
    from mlet_dist.models.ranking import model_factory
    from mlet_dist.training.resume_check import recorded_argv

    if args.out.exists() and not args.overwrite:  # fail before loading anything
        raise ValueError(f"output {args.out} already exists; pass --overwrite to replace it")
    run_cfg = run_model(args.run_dir, args.data)
    checkpoint, why = select_checkpoint(args.run_dir, args.checkpoint)
    env = init_distributed(args.backend)
    log = StageLog("mlet-collapse", enabled=env.is_main and stage_lines_wanted(args.progress))
    try:
        with log.stage(f"verify {checkpoint.name}'s checksums"):
            verify_checkpoint(checkpoint, env.rank, env.world_size)
        meta = DatasetMeta.load(run_cfg.data)
        build = model_factory(run_cfg.model, meta.table_sizes, len(meta.dense_features), meta.pooling)
        sharding = (
            run_cfg.sharding
            if args.sharding is None
            else ShardingConfig(args.sharding, run_cfg.sharding.owner_projection)
        )
        with log.stage("build and shard the k-wide model"), NoRandomInit():  # load_checkpoint fills every weight
            model = shard_model(build(torch.device("meta")), env, sharding)
        if env.is_main:
            print(f"loading {checkpoint} ({why}) on {env.world_size} rank(s)")
        with log.stage(f"load {checkpoint.name}"):
            load_checkpoint(model, checkpoint)
        topology = ServingTopology(
            world_size=args.serve_world_size or env.world_size,
            local_world_size=args.serve_local_world_size,
            compute_device=args.serve_device or env.device.type,
        )
        train_state = checkpoint / "train_state.json"
        source = {
            "run_dir": str(args.run_dir.resolve()),
            "checkpoint": str(checkpoint.resolve()),
            "checkpoint_choice": why,
            "train_state": json.loads(train_state.read_text()) if train_state.is_file() else None,
            "argv": recorded_argv(args.run_dir),  # provenance only: nothing is parsed
            "collapse_world_size": env.world_size,
        }
        export = write_serving_dir(
            model,
            args.out,
            ServingModelConfig.from_model(run_cfg.model, meta.table_sizes, len(meta.dense_features), meta.pooling),
            dataset=run_cfg.data,
            source=source,
            serving_topology=topology,
            serving_sharding=args.serve_sharding,
            chunk_rows=args.chunk_rows,
            overwrite=args.overwrite,
            log=log,
        )
        if env.is_main:
            print(
                f"wrote {export.path}: {len(export.manifest['tables'])} tables at d={run_cfg.model.embedding.embedding_dim}, "
                f"serving plan for {topology.world_size} {topology.compute_device} rank(s); "
                f"{collapse_summary(export.manifest['collapse'])}"
            )
        return export.manifest
    finally:
        shutdown_distributed()


def main(argv: Optional[Sequence[str]] = None) -> None:
    from mlet_dist.log_setup import quiet_library_logs

    quiet_library_logs()
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ServingDirError, UnsafeCheckpointError, ValueError, RuntimeError) as err:
        user_error_exit(err)


if __name__ == "__main__":
    main()
