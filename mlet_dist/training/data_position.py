"""Where training starts: the newest intact checkpoint in the run dir (or step 0), and which rows
its epoch has left, read against this job's stream.

A job resumed with the shape it was written with continues the epoch's plan at the next batch; a
job of another world size, batch size or data order trains the rows the epoch had left, cut into
its own batches (epoch_plan.py). What cannot be honoured (the rows left depend on a seed, shuffle
or split that changed) is refused before training with one line naming what changed.
"""

import sys
from typing import Optional, Tuple

from torch import nn
from torchrec.optim.keyed import CombinedOptimizer

from mlet_dist.data.epoch_plan import Plan, ResumeMismatch, resume_plan
from mlet_dist.data.parquet_batches import ParquetBatchStream
from mlet_dist.distributed.env import DistEnv
from mlet_dist.training.best_model import BestModelKeeper
from mlet_dist.training.checkpoint import CheckpointError, CheckpointManager, TrainPosition
from mlet_dist.training.run_dir import RunDirectory


def resume_position(
    epochs: int,
    env: DistEnv,
    checkpoints: CheckpointManager,
    model: nn.Module,
    optimizer: CombinedOptimizer,
    keeper: BestModelKeeper,
    out: RunDirectory,
    fresh: bool,
) -> TrainPosition:
    """Start of training: the newest complete checkpoint in the run dir, loaded into ``model``,
    ``optimizer`` and ``keeper``, unless ``fresh`` (--no-resume on a first attempt: the run dir
    was cleared, see run_dir.starts_fresh). ``epochs``: the run's --epochs."""
    torn = checkpoints.clean_torn()
    if torn and env.is_main:
        print(f"ignored and removed incomplete checkpoint(s) {torn}")
    if fresh:
        return TrainPosition(world_size=env.world_size)
    try:
        latest, position, skipped = checkpoints.load_newest_intact(model, optimizer)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}")
    for line in skipped:
        out.log("checkpoint_skipped", reason=line)
        if env.is_main:
            print(f"warning: skipped damaged checkpoint {line}", file=sys.stderr)
    if latest is None:
        return TrainPosition(world_size=env.world_size)
    keeper.load_state(position.extra.get("best", {}))
    if position.epoch < epochs:  # extended past its old last point: keep that point's weights
        keeper.keep_resumed_best(model, position.step)
    out.purge_step = position.step + 1
    position.extra["resumed_from"] = latest.name
    if env.is_main:
        print(f"resuming from {latest} (epoch {position.epoch}, batch {position.batch_in_epoch}, step {position.step})")
    return position


def resumed_epoch(position: TrainPosition, stream: ParquetBatchStream) -> Tuple[Optional[Plan], int, Optional[str]]:
    """(plan or None for a fresh epoch, first batch, a note for the log) of ``position.epoch``."""
    if position.data is None:
        return _older_version(position, stream)
    try:
        return resume_plan(position.data, position.batch_in_epoch, stream.data_record(None))
    except ResumeMismatch as err:
        raise CheckpointError(str(err)) from err


def _older_version(position: TrainPosition, stream: ParquetBatchStream) -> Tuple[Optional[Plan], int, Optional[str]]:
    """A checkpoint without a data position: its epoch can continue only in its own shape."""
    if position.batch_in_epoch == 0:
        return None, 0, None
    same = position.world_size == stream.world_size and position.global_batch_size in (0, stream.global_batch_size)
    if not same or position.batch_in_epoch > len(stream):
        raise CheckpointError(
            f"the checkpoint (an older version's, without a data position) stopped inside epoch {position.epoch} "
            f"on {position.world_size} ranks x {position.global_batch_size // max(position.world_size, 1)} rows: "
            "resume with that shape, or from an epoch-end checkpoint"
        )
    return None, position.batch_in_epoch, None
