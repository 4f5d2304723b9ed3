"""Train DLRM with MLET (or baseline) embeddings on N ranks; collapse and evaluate at the end.

    torchrun --nproc-per-node 2 mlet_dist/train.py --data DIR
    torchx run -s local_cwd dist.ddp -j 1x2 --script mlet_dist/train.py -- --data DIR

Thin on purpose: each step lives in a component (data, models, distributed, training).
"""

import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

if __package__ in (None, ""):  # run as a script by torchrun/torchx: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer

from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream
from mlet_dist.distributed.env import DistEnv, init_distributed, shutdown_distributed
from mlet_dist.distributed.sharding import shard_model
from mlet_dist.log_setup import quiet_library_logs
from mlet_dist.models.ranking import build_ranking_model
from mlet_dist.serving import export_after_training, load_serving_sharded
from mlet_dist.planning.plan_io import PlanMismatchError, check_plan_fits, load_plan, save_plan
from mlet_dist.models.embedding_tables import build_embedding_collection
from mlet_dist.distributed.state import gather_full_state_dict
from mlet_dist.training.best_model import BestModelKeeper
from mlet_dist.training.checkpoint import CheckpointError, CheckpointManager, TrainPosition
from mlet_dist.training.config import TrainConfig, parse_args
from mlet_dist.training.diagnostics import PREDICTIONS_DIR, diagnostics_from_state_dict, save_predictions
from mlet_dist.training.evaluation import Predictions, predict
from mlet_dist.training.optim import attach_fused_embedding_optimizer, build_optimizer
from mlet_dist.training.run_dir import RunDirectory
from mlet_dist.training.trainer import LoopConfig, Trainer

EVAL_SPLITS = ("val", "test")


def check_data_dir(data: Path) -> None:
    if not (data / "meta.json").is_file():
        raise SystemExit(
            f"error: no prepared dataset at {data} (missing meta.json). Prepare one first, e.g.\n"
            f"  mlet-prep criteo-kaggle data_prep/samples/criteo_sample.tsv {data}"
        )


def load_checked_plan(cfg: TrainConfig, model: nn.Module, env: DistEnv) -> Optional[ShardingPlan]:
    """The --plan file, or None; a plan that does not fit stops every rank before training."""
    if cfg.plan is None:
        return None
    try:
        plan, data = load_plan(cfg.plan)
        check_plan_fits(plan, model, env.world_size, env.device.type, data.get("topology"), str(cfg.plan))
    except PlanMismatchError as err:
        raise SystemExit(f"error: {err}")
    return plan


def resume_position(
    cfg: TrainConfig, env: DistEnv, checkpoints: CheckpointManager, model: nn.Module,
    optimizer: CombinedOptimizer, keeper: BestModelKeeper, out: RunDirectory,
) -> TrainPosition:
    """Start of training: the newest complete checkpoint in the run dir, unless --no-resume."""
    torn = checkpoints.clean_torn()
    if torn and env.is_main:
        print(f"ignored and removed incomplete checkpoint(s) {torn}")
    latest = checkpoints.latest() if cfg.resume else None
    if latest is None:
        return TrainPosition(world_size=env.world_size)
    try:
        position = checkpoints.load(latest, model, optimizer)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}")
    keeper.load_state(position.extra.get("best", {}))
    out.purge_step = position.step + 1
    position.extra["resumed_from"] = latest.name
    if env.is_main:
        print(f"resuming from {latest} (epoch {position.epoch}, batch {position.batch_in_epoch}, "
              f"step {position.step})")
    return position


def model_builder(cfg: TrainConfig, table_sizes: Dict[str, int], num_dense: int):
    cfg.dlrm.dense_in_features = num_dense

    def build(device: torch.device) -> nn.Module:
        collection = build_embedding_collection(table_sizes, cfg.embedding, device=device)
        return build_ranking_model(cfg.arch, collection, cfg.dlrm, cfg.dcn, device)

    return build


def count_params(model_factory, serving: bool) -> int:
    """Parameters at training (k-wide tables + projections) or serving (collapsed n×d tables)."""
    from mlet_dist.modules.collapse import collapse_model
    from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection

    model = model_factory(torch.device("meta"))
    if serving and any(isinstance(m, MLETEmbeddingBagCollection) for m in model.modules()):
        model = collapse_model(model, inplace=True)
    return sum(p.numel() for p in model.parameters())


def eval_streams(cfg: TrainConfig, env: DistEnv) -> Dict[str, ParquetBatchStream]:
    return {
        split: ParquetBatchStream(cfg.data, split, cfg.batch_size, env.rank, env.world_size,
                                  drop_last=False, max_batches=cfg.max_eval_batches)
        for split in EVAL_SPLITS
    }


def evaluate_all(model: nn.Module, cfg: TrainConfig, env: DistEnv, label: str) -> Dict[str, Predictions]:
    return {
        split: predict(model, stream, env.device, env.world_size, desc=f"{label} {split}",
                       show_progress=cfg.progress and env.is_main)
        for split, stream in eval_streams(cfg, env).items()
    }


def run(cfg: TrainConfig, env: DistEnv) -> Dict[str, object]:
    out = RunDirectory(cfg.run_dir, enabled=env.is_main)
    meta = DatasetMeta.load(cfg.data)
    build = model_builder(cfg, meta.table_sizes, len(meta.dense_features))

    torch.manual_seed(cfg.seed + env.rank)  # distinct table shards per rank; DDP syncs dense from rank 0
    model = build(torch.device("meta"))
    attach_fused_embedding_optimizer(model, cfg.optim)
    sharded = shard_model(model, env, cfg.sharding, plan=load_checked_plan(cfg, model, env))
    optimizer = build_optimizer(sharded, cfg.optim)
    if env.is_main:  # the plan in use, reusable as --plan
        save_plan(cfg.run_dir / "plan.json", sharded.plan, {"world_size": env.world_size,
                  "local_world_size": env.local_world_size, "compute_device": env.device.type})

    train_stream = ParquetBatchStream(cfg.data, "train", cfg.batch_size, env.rank, env.world_size,
                                      drop_last=True, max_batches=cfg.max_train_batches)
    if len(train_stream) == 0:
        raise SystemExit(
            f"error: the train split has fewer rows than one global batch "
            f"({cfg.batch_size} x {env.world_size} ranks); lower --batch-size"
        )
    keeper = BestModelKeeper(cfg.run_dir / "best_model", env)
    checkpoints = CheckpointManager(cfg.run_dir / "checkpoints", env, keep=cfg.keep_checkpoints)
    position = resume_position(cfg, env, checkpoints, sharded, optimizer, keeper, out)
    out.log("config", world_size=env.world_size, backend=env.backend, argv=sys.argv[1:],
            plan=str(sharded.plan))
    if "resumed_from" in position.extra:
        out.log("resume", checkpoint=position.extra.pop("resumed_from"), step=position.step,
                epoch=position.epoch, batch_in_epoch=position.batch_in_epoch)
    loop = LoopConfig(epochs=cfg.epochs, eval_every=cfg.eval_every, early_stop_patience=cfg.early_stop_patience,
                      checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every, progress=cfg.progress,
                      spectra=cfg.diagnostics)
    trainer = Trainer(loop, env, sharded, optimizer, train_stream, out=out, keeper=keeper, checkpoints=checkpoints,
                      evaluate=lambda: {s: p.metrics() for s, p in evaluate_all(sharded, cfg, env, "eval").items()})
    fit = trainer.fit(position)

    keeper.restore_best(sharded)
    summary: Dict[str, object] = {
        "model": "mlet" if cfg.embedding.mlet else "baseline",
        "embedding_dim": cfg.embedding.embedding_dim,
        "inner_dim": cfg.embedding.inner_dim if cfg.embedding.mlet else None,
        "world_size": env.world_size,
        "backend": env.backend,
        "epochs": cfg.epochs,
        "steps": fit.steps,
        "train_seconds": fit.train_seconds,
        "evaluations": fit.evaluations,
        "stopped_early_at_step": fit.stopped_early_at,
        "selected_epoch": keeper.best_epoch,
        "selected_step": keeper.best_step,
        "selected_by": "val auc",
        "params_training": count_params(build, serving=False),
        "params_serving": count_params(build, serving=True),
        "trained": keeper.best_metrics,
    }
    if cfg.collapse:
        trained_preds = evaluate_all(sharded, cfg, env, "trained")
        # Owner-side collapse into a serving directory, then loaded back as a stock TorchRec model.
        source = {"selected_epoch": keeper.best_epoch, "selected_step": keeper.best_step, "steps": fit.steps}
        export = export_after_training(sharded, cfg, source=source)
        collapsed, _ = load_serving_sharded(export.path, env.device, sharding=cfg.sharding.sharding)
        collapsed_preds = evaluate_all(collapsed, cfg, env, "collapsed")
        summary["serving_dir"] = str(export.path)
        summary["collapse"] = export.manifest["collapse"]
        summary["collapsed"] = {split: p.metrics() for split, p in collapsed_preds.items()}
        summary["collapsed_max_abs_prediction_diff"] = max(
            float((trained_preds[s].probs - collapsed_preds[s].probs).abs().max()) for s in EVAL_SPLITS
        )
    summary["arch"] = cfg.arch
    if cfg.save_predictions:
        test = trained_preds["test"] if cfg.collapse else evaluate_all(sharded, cfg, env, "predictions")["test"]
        if env.is_main:
            save_predictions(cfg.run_dir / PREDICTIONS_DIR, {"test": test})
    if cfg.diagnostics:
        full = gather_full_state_dict(sharded)  # collective: every rank takes part
        if env.is_main:
            summary["diagnostics"] = diagnostics_from_state_dict(full)
    out.write_json("summary.json", summary)
    if env.is_main:
        print_summary(summary)
    return summary


def print_summary(summary: Dict[str, object]) -> None:
    trained = summary["trained"]
    print(f"\n{summary['model']} d={summary['embedding_dim']} k={summary['inner_dim']} "
          f"on {summary['world_size']} ranks, selected by val AUC: epoch {summary['selected_epoch']}, "
          f"step {summary['selected_step']}")
    print(f"  trained:   val AUC {trained['val']['auc']:.4f}  test AUC {trained['test']['auc']:.4f}")
    if "collapsed" in summary:
        c = summary["collapsed"]
        print(f"  collapsed: val AUC {c['val']['auc']:.4f}  test AUC {c['test']['auc']:.4f}  "
              f"(max |p_trained - p_collapsed| = {summary['collapsed_max_abs_prediction_diff']:.2e})")


def main(argv: Optional[Sequence[str]] = None) -> None:
    quiet_library_logs()
    try:  # configuration mistakes: one line saying what to change, no traceback
        cfg = parse_args(argv)
        check_data_dir(cfg.data)
        env = init_distributed(cfg.backend)
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}")
    try:
        run(cfg, env)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
