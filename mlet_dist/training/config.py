"""Command-line configuration of a training run, as dataclasses (one per component)."""

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from mlet_dist.cli_common import add_model_shape_args
from mlet_dist.distributed.sharding import SHARDING_CHOICES, ShardingConfig
from mlet_dist.models.dcn import DCNConfig
from mlet_dist.models.dlrm import DLRMConfig
from mlet_dist.models.embedding_tables import EmbeddingSpec
from mlet_dist.training.optim import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, OptimConfig


@dataclass
class TrainConfig:
    data: Path
    run_dir: Path
    epochs: int = 1
    batch_size: int = 256
    max_train_batches: Optional[int] = None
    max_eval_batches: Optional[int] = None
    seed: int = 0
    backend: str = "auto"
    log_every: int = 10
    collapse: bool = True
    progress: bool = True
    plan: Optional[Path] = None
    checkpoint_every: int = 0
    eval_every: int = 0
    early_stop_patience: int = 0
    keep_checkpoints: int = 2
    resume: bool = True
    save_predictions: bool = False
    diagnostics: bool = False
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)
    arch: str = "dlrm"  # dlrm | dcnv2 (both take dlrm's bottom/top MLP sizes)
    dcn: DCNConfig = field(default_factory=DCNConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.checkpoint_every < 0:
            raise ValueError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.eval_every < 0:
            raise ValueError(f"--eval-every must be >= 0 (0: evaluate at the end of each epoch only), got {self.eval_every}")
        if self.early_stop_patience < 0:
            raise ValueError(f"--early-stop-patience must be >= 0 (0: train all epochs), got {self.early_stop_patience}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size (per rank) must be >= 1, got {self.batch_size}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlet-train",
        description="Train DLRM with MLET (or baseline) embeddings, sharded with TorchRec. "
        "Run under torchrun / torchx for several ranks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="prepared dataset dir (mlet-prep output)")
    p.add_argument("--run-dir", type=Path, default=None, help="default: runs/<timestamp>")
    add_model_shape_args(p)
    p.add_argument("--projection-init-std", type=float, default=None, help="default sqrt(2/(k+d))")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256, help="per-rank batch size")
    p.add_argument("--max-train-batches", type=int, default=None)
    p.add_argument("--max-eval-batches", type=int, default=None)
    p.add_argument("--embedding-optimizer", choices=sorted(EMBEDDING_OPTIMIZERS),
                   default=OptimConfig.embedding_optimizer, help="fused, in-backward")
    p.add_argument("--embedding-lr", type=float, default=OptimConfig.embedding_lr)
    p.add_argument("--dense-optimizer", choices=sorted(DENSE_OPTIMIZERS), default=OptimConfig.dense_optimizer,
                   help="MLPs and MLET projections")
    p.add_argument("--dense-lr", type=float, default=OptimConfig.dense_lr)
    p.add_argument("--sharding", choices=SHARDING_CHOICES, default="auto",
                   help="force one sharding type on every table, or let the planner choose")
    p.add_argument("--plan", type=Path, default=None,
                   help="sharding plan JSON (mlet-plan); checked against the model and world size")
    p.add_argument("--projection-after-comm", action="store_true",
                   help="MLET projections as dense DDP params after the all-to-all (k-wide traffic); "
                   "default projects on the owning rank (d-wide traffic)")
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10, help="steps between train-loss records")
    p.add_argument("--no-collapse", action="store_true", help="skip the collapse at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--save-predictions", action="store_true",
                   help="RUN_DIR/predictions/test.npz (row, prob, label) of the selected model")
    p.add_argument("--diagnostics", action="store_true",
                   help="singular values / effective ranks of the MLET projections at every evaluation point "
                   "(metrics.jsonl, TensorBoard) and of tables and projections in summary.json")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="steps between training checkpoints (0: only at epoch ends)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also evaluate val/test every N global steps inside an epoch; the point with the best "
                   "val AUC is the selected model (0: end of each epoch only)")
    p.add_argument("--early-stop-patience", type=int, default=0,
                   help="stop when this many evaluation points in a row (epoch ends, and --eval-every points) "
                   "bring no better val AUC; the best point is the selected model (0: train all --epochs)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="newest complete checkpoints kept")
    p.add_argument("--no-resume", action="store_true",
                   help="start fresh even if --run-dir holds a checkpoint (default: resume from the newest)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    run_dir = args.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    return TrainConfig(
        data=args.data,
        run_dir=run_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_train_batches=args.max_train_batches,
        max_eval_batches=args.max_eval_batches,
        seed=args.seed,
        backend=args.backend,
        log_every=args.log_every,
        collapse=not args.no_collapse and args.model == "mlet",
        progress=not args.no_progress,
        embedding=EmbeddingSpec(
            embedding_dim=args.embedding_dim,
            inner_dim=args.inner_dim,
            mlet=args.model == "mlet",
            projection_init_std=args.projection_init_std,
        ),
        dlrm=DLRMConfig(bottom_mlp=args.bottom_mlp, top_mlp=args.top_mlp),
        arch=args.arch,
        dcn=DCNConfig(cross_layers=args.dcn_layers, low_rank=args.dcn_low_rank),
        optim=OptimConfig(
            embedding_optimizer=args.embedding_optimizer,
            embedding_lr=args.embedding_lr,
            dense_optimizer=args.dense_optimizer,
            dense_lr=args.dense_lr,
        ),
        plan=args.plan,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        early_stop_patience=args.early_stop_patience,
        keep_checkpoints=args.keep_checkpoints,
        resume=not args.no_resume,
        save_predictions=args.save_predictions,
        diagnostics=args.diagnostics,
        sharding=ShardingConfig(args.sharding, owner_projection=not args.projection_after_comm),
    )
