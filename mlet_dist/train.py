"""Train DLRM with MLET (or baseline) embeddings on N ranks; collapse and evaluate at the end.

    torchrun --nproc-per-node 2 mlet_dist/train.py --data DIR
    torchx run -s local_cwd dist.ddp -j 1x2 --script mlet_dist/train.py -- --data DIR

Thin on purpose: each step lives in a component (data, models, distributed, training; what
follows the last step in training/finish.py).
"""

import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

if __package__ in (None, ""):  # run as a script by torchrun/torchx: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from mlet_dist.data.dataset_check import check_dataset
from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream
from mlet_dist.distributed.env import DistEnv, init_distributed, shutdown_distributed
from mlet_dist.distributed.sharding import shard_model
from mlet_dist.log_setup import quiet_library_logs
from mlet_dist.models.ranking import model_factory
from mlet_dist.serving import load_serving_sharded, write_run_serving_dir
from mlet_dist.planning.plan_io import load_checked_plan, save_plan
from mlet_dist.training.best_model import BestModelKeeper
from mlet_dist.training.checkpoint import CheckpointManager
from mlet_dist.training.config import TrainConfig, check_data_dir, parse_args
from mlet_dist.config_io import save_config
from mlet_dist.errors import UserError
from mlet_dist.training.data_position import resume_position
from mlet_dist.training.failure import agree_on_attempt_id, exit_now, report_failure
from mlet_dist.training.finish import Collapse, ServingCopy, evaluate_all, finish_run, finished_summary
from mlet_dist.training.optim import attach_fused_embedding_optimizer, build_optimizer, lr_schedule
from mlet_dist.training.precision import autocast_dense
from mlet_dist.training.run_dir import RunDirBusy, RunDirectory, claim_run_dir, starts_fresh
from mlet_dist.training.resume_check import check_resume_matches
from mlet_dist.training.run_name import agree_on_run_dir
from mlet_dist.training.trainer import Trainer

CONFIG_FILE = "config.json"


def collapse_to_serving(cfg: TrainConfig, env: DistEnv) -> Collapse:
    """Owner-side collapse into the run's serving dir, loaded back as a stock TorchRec model.
    Wired here because serving/ sits above training/, where the post-training phase lives."""

    def collapse(model: nn.Module, source: Dict[str, object]) -> ServingCopy:
        export = write_run_serving_dir(model, cfg, cfg.data, cfg.run_dir, source=source)  # cfg: a ModelConfig
        collapsed, _ = load_serving_sharded(export.path, env.device, sharding=cfg.sharding.sharding)
        return ServingCopy(export.path, export.manifest["collapse"], collapsed)

    return collapse


def run(cfg: TrainConfig, env: DistEnv) -> Dict[str, object]:
    agree_on_attempt_id()  # names this launch's errors/first-* record, even under plain torchrun
    if not cfg.run_dir_given:  # one default name for all ranks, whatever second each one started in
        cfg.run_dir = agree_on_run_dir(None)
    fresh = starts_fresh(cfg.resume)
    claim = claim_run_dir(cfg.run_dir, fresh, env.is_main)  # one job per run dir; --no-resume: a clean one
    check_resume_matches(cfg)  # another model's checkpoint in this run dir: one line, not a traceback
    out = RunDirectory(cfg.run_dir, enabled=env.is_main)
    if env.is_main:  # what this run is, for mlet-collapse/--config: no replay of an old command line
        save_config(cfg.run_dir / CONFIG_FILE, cfg)
    meta = DatasetMeta.load(cfg.data)
    check_dataset(meta)  # every split, from the parquet footers: bad ids/labels fail now, not at step N
    build = model_factory(cfg.model, meta.table_sizes, len(meta.dense_features), meta.pooling)

    torch.manual_seed(cfg.seed + env.rank)  # distinct table shards per rank; DDP syncs dense from rank 0
    model = build(torch.device("meta"))
    attach_fused_embedding_optimizer(model, cfg.optim, env.device.type)
    plan = load_checked_plan(cfg.plan, model, env.world_size, env.device.type) if cfg.plan else None
    sharded = shard_model(model, env, cfg.sharding, plan=plan)
    optimizer = build_optimizer(sharded, cfg.optim)
    autocast_dense(sharded, cfg.optim.dense_precision, env.device)  # fp32 (default): nothing changes
    if env.is_main:  # the plan in use, reusable as --plan
        save_plan(
            cfg.run_dir / "plan.json",
            sharded.plan,
            {"world_size": env.world_size, "local_world_size": env.local_world_size, "compute_device": env.device.type},
        )

    train_stream = ParquetBatchStream(
        cfg.data,
        "train",
        cfg.batch_size,
        env.rank,
        env.world_size,
        drop_last=True,
        max_batches=cfg.max_train_batches,
        shuffle=cfg.input.shuffle,
        seed=cfg.seed,
        **cfg.input.stream_kwargs(env),
    )
    if len(train_stream) == 0:
        raise SystemExit(
            f"error: the train split has fewer rows than one global batch "
            f"({cfg.batch_size} x {env.world_size} ranks); lower --batch-size"
        )
    keeper = BestModelKeeper(cfg.run_dir / "best_model", env)
    checkpoints = CheckpointManager(
        cfg.run_dir / "checkpoints", env, keep=cfg.keep_checkpoints, mode=cfg.checkpoint_mode
    )
    position = resume_position(cfg.epochs, env, checkpoints, sharded, optimizer, keeper, out, fresh)
    finished = finished_summary(cfg, position, env)
    if finished is not None:
        claim.release()
        return finished
    out.log("config", world_size=env.world_size, backend=env.backend, argv=sys.argv[1:], plan=str(sharded.plan))
    if "resumed_from" in position.extra:
        out.log(
            "resume",
            checkpoint=position.extra.pop("resumed_from"),
            step=position.step,
            epoch=position.epoch,
            batch_in_epoch=position.batch_in_epoch,
        )
    trainer = Trainer(
        cfg,
        env,
        sharded,
        optimizer,
        train_stream,
        out=out,
        keeper=keeper,
        checkpoints=checkpoints,
        lr_schedule=lr_schedule(optimizer, cfg.optim),
        evaluate=lambda: {s: p.metrics() for s, p in evaluate_all(sharded, cfg, env, "eval").items()},
    )
    fit = trainer.fit(position)
    summary = finish_run(sharded, cfg, env, fit, keeper, build, collapse_to_serving(cfg, env), out.write_json)
    claim.release()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    quiet_library_logs()
    try:  # configuration mistakes: one line saying what to change, no traceback, printed by rank 0
        cfg = parse_args(argv)
        check_data_dir(cfg.data)
        env = init_distributed(cfg.backend, cfg.collective_timeout_s)
    except (ValueError, RuntimeError, UserError, SystemExit) as err:
        if isinstance(err, SystemExit) and not isinstance(err.code, str):
            raise  # argparse printed its usage error already
        problem = err if isinstance(err, (SystemExit, UserError)) else UserError(str(err))
        rank = int(os.environ.get("RANK", "0"))
        code = report_failure(problem, rank, int(os.environ.get("WORLD_SIZE", "1")), run_dir=None)
        if rank != 0:  # the same mistake on every rank: let rank 0 say it before torchrun stops the job
            time.sleep(5)
        exit_now(code)
    try:
        run(cfg, env)
    except BaseException as err:  # no barrier here: a peer may be waiting in another collective
        busy = isinstance(err, RunDirBusy)  # the run dir is another job's: write nothing into it
        code = report_failure(err, env.rank, env.world_size, None if busy else cfg.run_dir)
        if busy and env.rank != 0:  # every rank stops; let rank 0 say it before torchrun ends the job
            time.sleep(5)
        exit_now(code)
    shutdown_distributed()


if __name__ == "__main__":
    main()
