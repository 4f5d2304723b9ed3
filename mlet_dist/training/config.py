"""Command-line configuration of a training run, as dataclasses (one per component)."""

import argparse
import os
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from mlet_dist.cli_common import add_model_shape_args, given_dests
from mlet_dist.config_io import from_jsonable, load_config, merged, to_jsonable
from mlet_dist.data.parquet_batches import DEFAULT_SHUFFLE_WINDOW, ORDERS
from mlet_dist.distributed.env import DEFAULT_COLLECTIVE_TIMEOUT_S, DistEnv
from mlet_dist.distributed.sharding import SHARDING_CHOICES, ShardingConfig
from mlet_dist.models.dcn import DCNConfig
from mlet_dist.models.dlrm import DLRMConfig
from mlet_dist.models.embedding_tables import EmbeddingSpec
from mlet_dist.modules.mlet_config import MLET_INITS
from mlet_dist.models.ranking import ModelConfig
from mlet_dist.training.checkpoint import CHECKPOINT_MODES
from mlet_dist.training.loop import PIPELINES
from mlet_dist.training.optim import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, OptimConfig
from mlet_dist.training.run_name import RUNS_ROOT, default_run_name


@dataclass
class InputConfig:
    """How each rank reads its training rows (``data/parquet_batches.py``)."""

    order: str = "local"  # local: each rank reads only its rows; exact: N ranks x B = one process x N*B
    shuffle: bool = True  # per epoch, seeded by --seed: row groups permuted, rows within windows
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW
    prefetch: int = 2  # batches made ahead in a background thread (0: none)

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"--data-order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.shuffle_window < 1:
            raise ValueError(f"--shuffle-window must be >= 1 rows, got {self.shuffle_window}")
        if self.prefetch < 0:
            raise ValueError(f"--prefetch must be >= 0 batches, got {self.prefetch}")

    def stream_kwargs(self, env: DistEnv) -> Dict[str, Any]:
        return {"order": self.order, "shuffle_window": self.shuffle_window, "prefetch": self.prefetch,
                "pin_memory": env.device.type == "cuda"}


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
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S
    input: InputConfig = field(default_factory=InputConfig)
    pipeline: str = "sparse-dist"
    checkpoint_mode: str = "auto"  # auto: async (dcp.async_save) with CUDA, sync on CPU
    # False: run_dir is this process's provisional default; train.run() replaces it with rank 0's
    # choice once the process group exists (training/run_name.py)
    run_dir_given: bool = True

    @property
    def model(self) -> ModelConfig:
        """The model subtree (what the one builder, models/ranking.py, takes)."""
        return ModelConfig(arch=self.arch, embedding=self.embedding, dlrm=self.dlrm, dcn=self.dcn)

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
        if self.log_every < 1:
            raise ValueError(f"--log-every must be >= 1 (steps between train-loss records), got {self.log_every}")
        for flag, value in (("--max-train-batches", self.max_train_batches),
                            ("--max-eval-batches", self.max_eval_batches)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1 (leave it out for the whole split), got {value}")
        if self.checkpoint_mode not in CHECKPOINT_MODES:
            raise ValueError(f"--checkpoint-mode must be one of {', '.join(CHECKPOINT_MODES)}, got {self.checkpoint_mode!r}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if not (math.isfinite(self.collective_timeout_s) and self.collective_timeout_s > 0):
            raise ValueError(f"--collective-timeout-s must be a positive number, got {self.collective_timeout_s}")


class _RankZeroParser(argparse.ArgumentParser):
    """Under torchrun every rank parses the same argv: a usage mistake (a forgotten --data) is
    printed once, by rank 0, as one line with a pointer to --help instead of the full usage text."""

    def error(self, message: str) -> NoReturn:
        if os.environ.get("RANK", "0") == "0":
            self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists every flag)\n")
        self.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _RankZeroParser(
        prog="mlet-train",
        description="Train DLRM with MLET (or baseline) embeddings, sharded with TorchRec. "
        "Run under torchrun / torchx for several ranks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=None,
                   help="start from a saved config (a run's config.json); flags given here override it")
    p.add_argument("--data", type=Path, default=None, help="prepared dataset dir (mlet-prep output)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="default: runs/<torchelastic run id> under torchrun/torchx, else runs/<timestamp>; "
                   "one name for all ranks, chosen by rank 0")
    add_model_shape_args(p)
    p.add_argument("--projection-init-std", type=float, default=None,
                   help="default sqrt(2/(k+d)) (--mlet-init paper) or sqrt(d)/k (matched)")
    p.add_argument("--mlet-init", choices=MLET_INITS, default=EmbeddingSpec.mlet_init,
                   help="paper: T ~ U(±sqrt(1/n)), W ~ N(0, 2/(k+d)); matched: T·W starts with the baseline "
                   "table's variance and its first rowwise-Adagrad step is lr per element, as a baseline table's "
                   "(the paper init's is ~lr·sqrt(2k/d): large at small d; reports/small_d/README.md)")
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
    p.add_argument("--data-order", choices=ORDERS, default=InputConfig.order,
                   help="local: each rank reads and decodes only its own 1/W of the rows (scales with the "
                   "cluster); exact: every rank reads every global batch and takes its slice, so N ranks x B "
                   "equal one process x N*B (equivalence tests)")
    p.add_argument("--pipeline", choices=PIPELINES, default="sparse-dist",
                   help="sparse-dist: TorchRec's TrainPipelineSparseDist overlaps the next batch's copy and "
                   "input all-to-all with this step; none: the plain forward/backward/step loop")
    p.add_argument("--check-inputs", action="store_true",
                   help="also check ids and feature names in Python on every step (host syncs; the reader and "
                   "the kernels' FATAL bounds check already guard the ids)")
    p.add_argument("--no-shuffle", action="store_true",
                   help="train in file order (default: shuffled per epoch, seeded by --seed)")
    p.add_argument("--shuffle-window", type=int, default=InputConfig.shuffle_window,
                   help="rows shuffled together after the per-epoch row-group permutation (memory bound)")
    p.add_argument("--prefetch", type=int, default=InputConfig.prefetch,
                   help="batches read ahead in a background thread (0: read in the training loop)")
    p.add_argument("--collective-timeout-s", type=float, default=DEFAULT_COLLECTIVE_TIMEOUT_S,
                   help="longest wait in one collective before the job fails (a peer that hangs without exiting)")
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
    p.add_argument("--checkpoint-mode", choices=CHECKPOINT_MODES, default="auto",
                   help="async: write checkpoints in the background (dcp.async_save), published at the next "
                   "--log-every step; sync: inside the step; auto: async with CUDA, sync on CPU")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="newest complete checkpoints kept")
    p.add_argument("--no-resume", action="store_true",
                   help="start fresh even if --run-dir holds a checkpoint (default: resume from the newest)")
    return p


# Which config fields each flag sets: how explicitly given flags override a --config file. A test
# checks that every flag of the parser is listed here, so a new flag cannot be forgotten.
FLAG_FIELDS: Dict[str, Tuple[str, ...]] = {
    "data": ("data",), "run_dir": ("run_dir", "run_dir_given"), "model": ("embedding.mlet", "collapse"),
    "embedding_dim": ("embedding.embedding_dim",), "inner_dim": ("embedding.inner_dim",),
    "bottom_mlp": ("dlrm.bottom_mlp",), "top_mlp": ("dlrm.top_mlp",), "arch": ("arch",),
    "dcn_layers": ("dcn.cross_layers",), "dcn_low_rank": ("dcn.low_rank",),
    "projection_init_std": ("embedding.projection_init_std",), "mlet_init": ("embedding.mlet_init",), "epochs": ("epochs",),
    "batch_size": ("batch_size",), "max_train_batches": ("max_train_batches",),
    "max_eval_batches": ("max_eval_batches",), "embedding_optimizer": ("optim.embedding_optimizer",),
    "embedding_lr": ("optim.embedding_lr",), "dense_optimizer": ("optim.dense_optimizer",),
    "dense_lr": ("optim.dense_lr",), "sharding": ("sharding.sharding",), "plan": ("plan",),
    "projection_after_comm": ("sharding.owner_projection",), "backend": ("backend",),
    "data_order": ("input.order",), "pipeline": ("pipeline",), "check_inputs": ("embedding.validate_inputs",),
    "no_shuffle": ("input.shuffle",), "shuffle_window": ("input.shuffle_window",),
    "prefetch": ("input.prefetch",), "collective_timeout_s": ("collective_timeout_s",), "seed": ("seed",),
    "log_every": ("log_every",), "no_collapse": ("collapse",), "no_progress": ("progress",),
    "save_predictions": ("save_predictions",), "diagnostics": ("diagnostics",),
    "checkpoint_every": ("checkpoint_every",), "eval_every": ("eval_every",),
    "early_stop_patience": ("early_stop_patience",), "keep_checkpoints": ("keep_checkpoints",),
    "no_resume": ("resume",), "config": (), "checkpoint_mode": ("checkpoint_mode",),
}


def parse_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """The run's TrainConfig: from the flags, or from ``--config FILE`` (a run's config.json)
    with the flags given on the command line overriding it."""
    args = build_parser().parse_args(argv)
    if args.data is None and args.config is None:
        build_parser().error("the following arguments are required: --data (or --config FILE)")
    from_flags = _from_args(args)
    if args.config is None:
        return from_flags
    try:
        base = to_jsonable(load_config(TrainConfig, args.config))
    except ValueError as err:
        raise ValueError(f"--config: {err}") from None
    chosen = to_jsonable(from_flags)
    overrides: Dict[str, Any] = {"run_dir": chosen["run_dir"], "run_dir_given": chosen["run_dir_given"]}
    for dest in sorted(given_dests(build_parser, argv)):  # a config file says what to train; where is this command's choice
        for path in FLAG_FIELDS[dest]:
            node = chosen
            for key in path.split("."):
                node = node[key]
            overrides[path] = node
    return from_jsonable(TrainConfig, merged(base, overrides), where=str(args.config))


def _from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data or Path("."),
        run_dir=args.run_dir or RUNS_ROOT / default_run_name(),
        run_dir_given=args.run_dir is not None,
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
            mlet_init=args.mlet_init,
            validate_inputs=args.check_inputs,
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
        collective_timeout_s=args.collective_timeout_s,
        pipeline=args.pipeline,
        checkpoint_mode=args.checkpoint_mode,
        input=InputConfig(order=args.data_order, shuffle=not args.no_shuffle,
                          shuffle_window=args.shuffle_window, prefetch=args.prefetch),
    )
