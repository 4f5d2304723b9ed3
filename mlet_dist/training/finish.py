"""After the last training step: the selected model, its collapse check, predictions,
diagnostics and the run's summary (summary.json and the console ending).

A module of its own so that train.py stays the entry (arguments, setup, the training call).
Every rank walks these steps alike: evaluation, collapse, the Gram matrices and the state gather
are collectives. The collapse itself lives in serving/, a layer above this one, so the entry
hands it in as a callable (``Collapse``).
"""

import contextlib
import io
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional

import torch
from torch import nn

from data_prep.safe_json import JSONFileError, read_json_file
from mlet_dist.cli_common import ranks_phrase
from mlet_dist.data.parquet_batches import ParquetBatchStream
from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.state import gather_full_state_dict
from mlet_dist.distributed.table_grams import table_grams
from mlet_dist.distributed.collapse import collapse_model
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection
from mlet_dist.training.best_model import BestModelKeeper
from mlet_dist.training.checkpoint import TrainPosition
from mlet_dist.training.config import TrainConfig
from mlet_dist.training.diagnostics import (
    PREDICTIONS_DIR,
    diagnostics_from_grams,
    is_projection_key,
    is_table_key,
    save_predictions,
)
from mlet_dist.training.evaluation import Predictions, predict
from mlet_dist.training.trainer import FitResult

EVAL_SPLITS = ("val", "test")
Summary = Dict[str, Any]  # summary.json: JSON values
ModelBuilder = Callable[[torch.device], nn.Module]


class ServingCopy(NamedTuple):
    """The collapsed model as serving wrote it and loaded it back."""

    path: Path  # the serving directory
    collapse: Dict[str, object]  # its manifest's collapse record
    model: nn.Module  # loaded back sharded, a stock TorchRec model


# (trained sharded model, source record for the manifest) -> the serving copy
Collapse = Callable[[nn.Module, Dict[str, object]], ServingCopy]


def eval_streams(cfg: TrainConfig, env: DistEnv) -> Dict[str, ParquetBatchStream]:
    """Each rank's share of val and test, unshuffled, capped by --max-eval-batches."""
    return {
        split: ParquetBatchStream(
            cfg.data,
            split,
            cfg.batch_size,
            env.rank,
            env.world_size,
            drop_last=False,
            max_batches=cfg.max_eval_batches,
            **cfg.input.stream_kwargs(env),
            shuffle=False,
        )
        for split in EVAL_SPLITS
    }


def evaluate_all(model: nn.Module, cfg: TrainConfig, env: DistEnv, label: str) -> Dict[str, Predictions]:
    """Predictions on val and test gathered from all ranks; ``label`` names the progress bar."""
    return {
        split: predict(
            model,
            stream,
            env.device,
            env.world_size,
            desc=f"{label} {split}",
            show_progress=cfg.show_progress and env.is_main,
        )
        for split, stream in eval_streams(cfg, env).items()
    }


def count_params(build: ModelBuilder, serving: bool) -> int:
    """Parameters at training (k-wide tables + projections) or serving (collapsed n×d tables)."""
    model = build(torch.device("meta"))
    if serving and any(isinstance(m, MLETEmbeddingBagCollection) for m in model.modules()):
        model = collapse_model(model, inplace=True)
    return sum(p.numel() for p in model.parameters())


def select_best(model: nn.Module, keeper: BestModelKeeper, cfg: TrainConfig, env: DistEnv) -> None:
    """Load the best evaluation point into ``model``; with its snapshot gone the live model is
    the selected one, and its metrics are measured now so the summary still has them."""
    if not keeper.restore_best(model):
        keeper.best_metrics = {s: p.metrics() for s, p in evaluate_all(model, cfg, env, "selected").items()}


def base_summary(
    cfg: TrainConfig, env: DistEnv, fit: FitResult, keeper: BestModelKeeper, build: ModelBuilder
) -> Summary:
    """What was trained, how long, and which point was selected, before any post-check."""
    return {
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
        "dead_run": fit.dead_run,  # val AUC stuck near 0.5 (training/dead_run.py)
        "selected_epoch": keeper.best_epoch,
        "selected_step": keeper.best_step,
        "selected_by": "val auc",
        "params_training": count_params(build, serving=False),
        "params_serving": count_params(build, serving=True),
        "trained": keeper.best_metrics,
    }


def collapse_and_compare(
    model: nn.Module,
    cfg: TrainConfig,
    env: DistEnv,
    fit: FitResult,
    keeper: BestModelKeeper,
    collapse: Collapse,
    summary: Summary,
) -> Dict[str, Predictions]:
    """Collapse the selected model, load it back and score both: the serving model must predict
    what the trained one does (the max difference goes into the summary). Returns the trained
    model's predictions, for reuse by --save-predictions."""
    trained = evaluate_all(model, cfg, env, "trained")
    source: Dict[str, object] = {
        "selected_epoch": keeper.best_epoch,
        "selected_step": keeper.best_step,
        "steps": fit.steps,
    }
    serving = collapse(model, source)
    collapsed = evaluate_all(serving.model, cfg, env, "collapsed")
    summary["serving_dir"] = str(serving.path)
    summary["collapse"] = serving.collapse
    summary["collapsed"] = {split: p.metrics() for split, p in collapsed.items()}
    summary["collapsed_max_abs_prediction_diff"] = max(
        float((trained[s].probs - collapsed[s].probs).abs().max()) for s in EVAL_SPLITS
    )
    return trained


def save_test_predictions(
    model: nn.Module, cfg: TrainConfig, env: DistEnv, trained: Optional[Dict[str, Predictions]]
) -> None:
    """Per-row test predictions for the sweep's rare-item analysis; reuses the collapse check's
    trained predictions when there are some (one evaluation fewer)."""
    test = trained["test"] if trained is not None else evaluate_all(model, cfg, env, "predictions")["test"]
    if env.is_main:
        save_predictions(cfg.run_dir / PREDICTIONS_DIR, {"test": test})


def add_diagnostics(model: nn.Module, env: DistEnv, summary: Summary) -> None:
    """Spectra of the final tables and projections. Collectives: every rank takes part; the
    tables' Gram matrices are reduced, so no rank holds a whole table."""
    grams = table_grams(model, keep=is_table_key, device=env.device)
    projections = gather_full_state_dict(model, keep=is_projection_key)  # k×d each: small
    if env.is_main:
        summary["diagnostics"] = diagnostics_from_grams(grams, projections)


def finish_run(
    model: nn.Module,
    cfg: TrainConfig,
    env: DistEnv,
    fit: FitResult,
    keeper: BestModelKeeper,
    build: ModelBuilder,
    collapse: Collapse,
    write_json: Callable[[str, Summary], None],
) -> Summary:
    """The whole post-training phase, in its order: select, summarise, collapse and compare,
    predictions, diagnostics; then summary.json (``write_json``: the run dir's, rank 0 only)
    and the console ending."""
    select_best(model, keeper, cfg, env)
    summary = base_summary(cfg, env, fit, keeper, build)
    trained = collapse_and_compare(model, cfg, env, fit, keeper, collapse, summary) if cfg.collapse else None
    summary["arch"] = cfg.arch
    if cfg.save_predictions:
        save_test_predictions(model, cfg, env, trained)
    if cfg.diagnostics:
        add_diagnostics(model, env, summary)
    write_json("summary.json", summary)
    if env.is_main:
        print_summary(summary, cfg.run_dir)
    return summary


def finished_summary(cfg: TrainConfig, position: TrainPosition, env: DistEnv) -> Optional[Summary]:
    """A rerun of a run that finished (its checkpoint past the last epoch, its summary.json
    written): that summary, printed again, instead of an empty re-selection ("among 0
    evaluation point(s)") that re-evaluates and rewrites it. Every rank decides alike from
    the resumed position and the shared run dir; an unreadable summary is one error line."""
    summary_path = cfg.run_dir / "summary.json"
    if position.step == 0 or position.epoch < cfg.epochs or not summary_path.is_file():
        return None
    text = io.StringIO()
    try:  # rendered on every rank first: a summary that cannot be printed stops every rank alike
        summary = read_json_file(summary_path, "summary")
        with contextlib.redirect_stdout(text):
            print_summary(summary, cfg.run_dir)
    except (JSONFileError, KeyError, TypeError, ValueError) as err:  # not the summary this code writes
        what = (
            err
            if isinstance(err, JSONFileError)
            else f"{summary_path} is not a run summary ({type(err).__name__}: {err})"
        )
        raise SystemExit(f"error: run already complete, but {what}; rerun with --no-resume to train afresh")
    if env.is_main:
        print(
            f"run already complete: {cfg.run_dir} trained {position.epoch} epoch(s), {position.step} steps "
            f"(--epochs {cfg.epochs}); its summary:{text.getvalue()}",
            end="",
        )
    return summary


def print_summary(summary: Summary, run_dir: Optional[Path] = None) -> None:
    """The console ending: which point was selected (its AUC, which may be an --eval-every point
    never printed during training), and where the run and its serving model are."""
    trained = summary["trained"]
    shape = f"d={summary['embedding_dim']}" + (f" k={summary['inner_dim']}" if summary["inner_dim"] else "")
    print(
        f"\n{summary['model']} {shape} on {ranks_phrase(summary['world_size'])}, selected by val AUC "
        f"among {summary['evaluations']} evaluation point(s): epoch {summary['selected_epoch']}, "
        f"step {summary['selected_step']}"
    )
    print(f"  trained:   val AUC {trained['val']['auc']:.4f}  test AUC {trained['test']['auc']:.4f}")
    if "collapsed" in summary:
        c = summary["collapsed"]
        print(
            f"  collapsed: val AUC {c['val']['auc']:.4f}  test AUC {c['test']['auc']:.4f}  "
            f"(max |p_trained - p_collapsed| = {summary['collapsed_max_abs_prediction_diff']:.2e})"
        )
    if run_dir is not None:
        print(f"  run dir: {run_dir}  (summary.json, metrics.jsonl, tensorboard/)")
    if "serving_dir" in summary:
        print(
            f"  serving dir: {summary['serving_dir']}  (score it with mlet-predict --serving DIR --data DATA "
            f"--out FILE.parquet)"
        )
    elif summary["model"] == "mlet":
        print(
            f"  not collapsed (--no-collapse): mlet-collapse --run-dir {run_dir} --out {run_dir}/serving "
            "makes the serving dir"
        )
    else:
        print(
            f"  serving: mlet-collapse --run-dir {run_dir} --out {run_dir}/serving exports this baseline "
            "for mlet-predict"
        )
