"""Command-line configuration of a training run, as dataclasses (one per component).

The flags are declared on the fields (config_flags.py): the parser, the tree built from it, and
which fields a flag given beside ``--config FILE`` overrides all come from those declarations.
The model's fields and flags are ModelConfig's (models/ranking.py) and the loop's are LoopConfig's
(training/loop.py), inherited, so the run's config.json keeps its flat keys (``embedding``,
``dlrm``, ``arch``, ``dcn``, ``epochs``, ``eval_every``, ...).
"""

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, NoReturn, Optional, Sequence

from data_prep.dataset_format import raw_file_message
from mlet_dist.cli_common import given_dests
from mlet_dist.config_flags import (
    DefaultsHelpFormatter,
    add_flags,
    command_choices,
    derived,
    flag,
    flag_values,
    negated,
    nested,
    no_flag,
    switch,
    tree_from_flags,
    written_paths,
)
from mlet_dist.config_io import from_jsonable, load_config, merged, to_jsonable
from mlet_dist.data.parquet_batches import DEFAULT_SHUFFLE_WINDOW, ORDERS
from mlet_dist.distributed.env import DEFAULT_COLLECTIVE_TIMEOUT_S, DistEnv
from mlet_dist.distributed.sharding import SHARDING_CHOICES, ShardingConfig
from mlet_dist.errors import UserError
from mlet_dist.models.ranking import ModelConfig
from mlet_dist.training.checkpoint import CHECKPOINT_MODES
from mlet_dist.training.loop import LoopConfig
from mlet_dist.training.optim import CPU_TABLE_UPDATES, DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, OptimConfig
from mlet_dist.training.precision import DENSE_PRECISIONS
from mlet_dist.training.run_name import RUNS_ROOT, default_run_name


@dataclass
class InputConfig:
    """How each rank reads its training rows (``data/parquet_batches.py``)."""

    # local: each rank reads only its rows; exact: N ranks x B = one process x N*B
    order: str = field(
        default="local",
        metadata=flag(
            "--data-order",
            choices=ORDERS,
            help="local: each rank reads and decodes only its own 1/W of the rows (scales with the cluster); exact: "
            "every rank reads every global batch and takes its slice, so N ranks x B equal one process x N*B "
            "(equivalence tests)",
        ),
    )
    # per epoch, seeded by --seed: row groups permuted, rows within windows
    shuffle: bool = field(
        default=True,
        metadata=negated("--no-shuffle", help="train in file order (default: shuffled per epoch, seeded by --seed)"),
    )
    shuffle_window: int = field(
        default=DEFAULT_SHUFFLE_WINDOW,
        metadata=flag(
            "--shuffle-window", help="rows shuffled together after the per-epoch row-group permutation (memory bound)"
        ),
    )
    prefetch: int = field(
        default=2,
        metadata=flag(  # batches made ahead in a background thread (0: none)
            "--prefetch", help="batches read ahead in a background thread (0: read in the training loop)"
        ),
    )

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"--data-order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.shuffle_window < 1:
            raise ValueError(f"--shuffle-window must be >= 1 rows, got {self.shuffle_window}")
        if self.prefetch < 0:
            raise ValueError(f"--prefetch must be >= 0 batches, got {self.prefetch}")

    def stream_kwargs(self, env: DistEnv) -> Dict[str, Any]:
        return {
            "order": self.order,
            "shuffle_window": self.shuffle_window,
            "prefetch": self.prefetch,
            "pin_memory": env.device.type == "cuda",
        }


_OPTIM_FLAGS = nested(
    embedding_optimizer=flag("--embedding-optimizer", choices=sorted(EMBEDDING_OPTIMIZERS), help="fused, in-backward"),
    embedding_lr=flag("--embedding-lr", help="learning rate of the tables' fused optimizer"),
    dense_optimizer=flag("--dense-optimizer", choices=sorted(DENSE_OPTIMIZERS), help="MLPs and MLET projections"),
    dense_lr=flag("--dense-lr", help="learning rate of the MLPs and MLET projections"),
    eps=no_flag("the optimizers' epsilon: fixed (OptimConfig)"),
    dense_precision=flag(
        "--dense-precision",
        choices=list(DENSE_PRECISIONS),
        help="autocast of the MLPs and the interaction (bf16: fp32 master weights, checkpoints and "
        "exports; the embedding lookups stay fp32); fp16 is refused (it needs loss scaling, which "
        "the tables' in-backward optimizer cannot take)",
    ),
    cpu_table_update=flag(
        "--cpu-table-update",
        choices=list(CPU_TABLE_UPDATES),
        help="fused rowwise Adagrad on CPU: fbgemm's JIT kernels (default) or its plain loop (the same "
        "update, 8 B more state per row; faster on CPUs where benchmarks/bench_table_update.py says so); "
        "no effect on CUDA or other optimizers",
    ),
)
_SHARDING_FLAGS = nested(
    sharding=flag(
        "--sharding", choices=SHARDING_CHOICES, help="force one sharding type on every table, or let the planner choose"
    ),
    owner_projection=negated(
        "--projection-after-comm",
        help="MLET projections as dense DDP params after the all-to-all (k-wide traffic); "
        "default projects on the owning rank (d-wide traffic)",
    ),
)


@dataclass(kw_only=True)
class TrainConfig(ModelConfig, LoopConfig):
    """A training run: the model (ModelConfig's fields), the loop (LoopConfig's: epochs, evaluation
    points, checkpoints, logging) and how to read and write it."""

    data: Path = field(
        metadata=flag(
            "--data",
            default=None,
            parse=lambda data: Path(".") if data is None else data,
            help="prepared dataset dir (mlet-prep output)",
        )
    )
    run_dir: Path = field(
        metadata=flag(
            "--run-dir",
            default=None,
            command_choice=True,
            parse=lambda run_dir: RUNS_ROOT / default_run_name() if run_dir is None else run_dir,
            help="default: runs/<torchelastic run id> under torchrun/torchx, else runs/<timestamp>; one name for all "
            "ranks, chosen by rank 0",
        )
    )
    batch_size: int = field(default=256, metadata=flag("--batch-size", help="per-rank batch size"))
    max_train_batches: Optional[int] = field(
        default=None,
        metadata=flag("--max-train-batches", help="steps per epoch at most (default: the whole train split)"),
    )
    max_eval_batches: Optional[int] = field(
        default=None,
        metadata=flag(
            "--max-eval-batches",
            help="evaluate on the first N x --batch-size rows of val and test, the same rows at "
            "every world size (default: the whole splits)",
        ),
    )
    seed: int = field(
        default=0,
        metadata=flag("--seed", help="initial weights (seed + rank per table shard) and the per-epoch shuffle"),
    )
    backend: str = field(
        default="auto",
        metadata=flag(
            "--backend",
            choices=["auto", "gloo", "nccl"],
            help="torch.distributed backend; auto: nccl with CUDA, else gloo",
        ),
    )
    # a baseline run has nothing to collapse
    collapse: bool = field(
        default=True,
        metadata=switch(
            "--no-collapse",
            reads=("model",),
            parse=lambda no_collapse, model: not no_collapse and model == "mlet",
            help="skip the collapse at the end",
        ),
    )
    plan: Optional[Path] = field(
        default=None,
        metadata=flag("--plan", help="sharding plan JSON (mlet-plan); checked against the model and world size"),
    )
    keep_checkpoints: int = field(
        default=2, metadata=flag("--keep-checkpoints", help="newest complete checkpoints kept")
    )
    resume: bool = field(
        default=True,
        metadata=negated(
            "--no-resume",
            help="start fresh even if --run-dir holds a checkpoint: an earlier run's files are moved to "
            "RUN_DIR/previous-<time>/ (default: resume from the newest)",
        ),
    )
    save_predictions: bool = field(
        default=False,
        metadata=switch(
            "--save-predictions", help="RUN_DIR/predictions/test.npz (row, prob, label) of the selected model"
        ),
    )
    optim: OptimConfig = field(default_factory=OptimConfig, metadata=_OPTIM_FLAGS)
    sharding: ShardingConfig = field(default_factory=ShardingConfig, metadata=_SHARDING_FLAGS)
    collective_timeout_s: float = field(
        default=DEFAULT_COLLECTIVE_TIMEOUT_S,
        metadata=flag(
            "--collective-timeout-s",
            help="longest wait in one collective before the job fails (a peer that hangs without exiting)",
        ),
    )
    input: InputConfig = field(default_factory=InputConfig)
    # auto: async (dcp.async_save) with CUDA, sync on CPU
    checkpoint_mode: str = field(
        default="auto",
        metadata=flag(
            "--checkpoint-mode",
            choices=CHECKPOINT_MODES,
            help="async: write checkpoints in the background (dcp.async_save), published at the next --log-every "
            "step (on CPU it stages a second copy of the rank's state: a save that would not fit the free memory "
            "is written synchronously, with a warning); sync: inside the step; auto: async with CUDA, sync on CPU",
        ),
    )
    # False: run_dir is this process's provisional default; train.run() replaces it with rank 0's
    # choice once the process group exists (training/run_name.py)
    run_dir_given: bool = field(default=True, metadata=derived("run_dir", parse=lambda run_dir: run_dir is not None))

    @property
    def model(self) -> ModelConfig:
        """The model subtree (what the one builder, models/ranking.py, takes)."""
        return ModelConfig.of(self)

    def __post_init__(self) -> None:
        LoopConfig.__post_init__(self)
        if self.batch_size < 1:
            raise ValueError(f"--batch-size (per rank) must be >= 1, got {self.batch_size}")
        for option, value in (
            ("--max-train-batches", self.max_train_batches),
            ("--max-eval-batches", self.max_eval_batches),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{option} must be >= 1 (leave it out for the whole split), got {value}")
        if self.checkpoint_mode not in CHECKPOINT_MODES:
            raise ValueError(
                f"--checkpoint-mode must be one of {', '.join(CHECKPOINT_MODES)}, got {self.checkpoint_mode!r}"
            )
        if self.keep_checkpoints < 1:
            raise ValueError(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if not (math.isfinite(self.collective_timeout_s) and self.collective_timeout_s > 0):
            raise ValueError(f"--collective-timeout-s must be a positive number, got {self.collective_timeout_s}")


# The lr schedule counts steps as theirs do (the first step is 1) but is not aliased: it holds the
# full lr between warm-up and decay, where theirs holds (W-1)/W of it (training/lr_schedule.py).
_SCHEDULE_NOTE = "and --lr-schedule-applies-to (all, dense, embedding); full lr between warm-up and decay"
_WARMUP = f"--lr-warmup-steps (steps counted from 1, as theirs), {_SCHEDULE_NOTE}"
_DECAY_START = f"--lr-decay-start, with --lr-decay-steps, {_SCHEDULE_NOTE}"
_DECAY_STEPS = f"--lr-decay-steps (power-2 decay from --lr-decay-start), {_SCHEDULE_NOTE}"
# Flags of TorchRec's dlrm_main.py and MLPerf's dlrm_s_pytorch.py a user of those brings along:
# {their name: ours, and what differs}. Answered in the one usage line, never guessed silently.
FOREIGN_FLAGS = {
    "--embedding_dim": "--embedding-dim (-d), the output width d (MLET's tables are --inner-dim k wide)",
    "--arch-sparse-feature-size": "--embedding-dim (-d), the output width d (MLET's tables are --inner-dim k wide)",
    "--learning_rate": "--embedding-lr (the tables' fused optimizer) and --dense-lr (MLPs, projections)",
    "--learning-rate": "--embedding-lr (the tables' fused optimizer) and --dense-lr (MLPs, projections)",
    "--limit_train_batches": "--max-train-batches (steps per epoch)",
    "--limit_val_batches": "--max-eval-batches (N x --batch-size rows of val and of test)",
    "--limit_test_batches": "--max-eval-batches (N x --batch-size rows of val and of test)",
    "--validation_freq_within_epoch": "--eval-every (global steps between evaluations inside an epoch)",
    "--test-freq": "--eval-every (global steps between evaluations inside an epoch)",
    "--over_arch_layer_sizes": "--top-mlp, comma-separated (e.g. 512,256,1)",
    "--arch-mlp-top": "--top-mlp, comma-separated (e.g. 512,256,1), not dash-separated",
    "--dense_arch_layer_sizes": "--bottom-mlp, comma-separated (e.g. 512,256; d is appended)",
    "--arch-mlp-bot": "--bottom-mlp, comma-separated without the dense input width (e.g. 512,256; d is appended)",
    "--interaction_type": "--arch (dlrm: dot interaction; dcnv2: cross network, --dcn-layers, --dcn-low-rank)",
    "--arch-interaction-op": "--arch (dlrm: dot interaction; dcnv2: cross network, --dcn-layers, --dcn-low-rank)",
    "--batch_size": "--batch-size (per rank)",
    "--mini-batch-size": "--batch-size (per rank; MLPerf's is the global batch)",
    "--nepochs": "--epochs",
    "--num_embeddings_per_feature": "none: table sizes come from the dataset (mlet-prep torchrec-npy "
    "--num-embeddings-per-feature)",
    "--in_memory_binary_criteo_path": "--data, a dataset prepared by mlet-prep (e.g. mlet-prep torchrec-npy)",
    **dict.fromkeys(("--lr_warmup_steps", "--lr-num-warmup-steps"), _WARMUP),
    **dict.fromkeys(("--lr_decay_start", "--lr-decay-start-step"), _DECAY_START),
    **dict.fromkeys(("--lr_decay_steps", "--lr-num-decay-steps"), _DECAY_STEPS),
}


def foreign_flag_hints(message: str) -> Optional[str]:
    """For argparse's "unrecognized arguments: ..." naming TorchRec/MLPerf flags: which of ours
    each one is (``--name=value`` and ``--name value`` alike); None when none of them is one."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return None
    names = dict.fromkeys(token.split("=", 1)[0] for token in message[len(prefix) :].split())
    hints = [
        f"{name} is TorchRec's/MLPerf's name; here: {FOREIGN_FLAGS[name]}" for name in names if name in FOREIGN_FLAGS
    ]
    return "; ".join(hints) or None


class _RankZeroParser(argparse.ArgumentParser):
    """Under torchrun every rank parses the same argv: a usage mistake (a forgotten --data) is
    printed once, by rank 0, as one line with a pointer to --help instead of the full usage text;
    a TorchRec/MLPerf flag name is answered with the matching flag of ours."""

    def error(self, message: str) -> NoReturn:
        message = foreign_flag_hints(message) or message
        if os.environ.get("RANK", "0") == "0":
            self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists every flag)\n")
        self.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _RankZeroParser(
        prog="mlet-train",
        description="Train DLRM with MLET (or baseline) embeddings, sharded with TorchRec. "
        "Run under torchrun / torchx for several ranks.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="start from a saved config (a run's config.json); flags given here override it",
    )
    add_flags(p, TrainConfig, first=("data", "run_dir"))
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """The run's TrainConfig: from the flags, or from ``--config FILE`` (a run's config.json)
    with the flags given on the command line overriding it."""
    args = build_parser().parse_args(argv)
    if args.data is None and args.config is None:
        build_parser().error("the following arguments are required: --data (or --config FILE)")
    if args.config is None:
        return tree_from_flags(TrainConfig, args)
    try:
        base = to_jsonable(load_config(TrainConfig, args.config))
    except ValueError as err:
        raise ValueError(f"--config: {err}") from None
    values = flag_values(TrainConfig, args)
    writes = written_paths(TrainConfig)
    # a config file says what to train; where to write it is this command's choice
    given = given_dests(build_parser, argv) | set(command_choices(TrainConfig))
    overrides = {path: values[path] for dest in sorted(given) for path in writes.get(dest, ())}
    return from_jsonable(TrainConfig, merged(base, overrides), where=str(args.config))


def check_data_dir(data: Path) -> None:
    """--data must be mlet-prep's output dir; a raw file gets the mlet-prep command that converts it.
    Checked once the flags parse, before any rank starts a process group."""
    if data.is_file():
        raise UserError(raw_file_message(data, "--data"))
    if not (data / "meta.json").is_file():
        raise UserError(
            f"no prepared dataset at {data} (missing meta.json). Prepare one first, e.g.\n"
            f"  mlet-prep criteo-kaggle data_prep/samples/criteo_sample.tsv {data}"
        )
