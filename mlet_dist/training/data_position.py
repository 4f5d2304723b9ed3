"""Which rows a resumed epoch trains: the checkpoint's data position read against this job's stream.

A job resumed with the shape it was written with continues the epoch's plan at the next batch; a
job of another world size, batch size or data order trains the rows the epoch had left, cut into
its own batches (epoch_plan.py). What cannot be honoured (the rows left depend on a seed, shuffle
or split that changed) is refused before training with one line naming what changed.
"""

from typing import Optional, Tuple

from mlet_dist.data.epoch_plan import Plan, ResumeMismatch, resume_plan
from mlet_dist.data.parquet_batches import ParquetBatchStream
from mlet_dist.training.checkpoint import CheckpointError, TrainPosition


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
            "resume with that shape, or from an epoch-end checkpoint")
    return None, position.batch_in_epoch, None
