"""The step loop: segments of training steps (the plain loop, or TorchRec's
``TrainPipelineSparseDist``), each run until a boundary that says why it stopped, and the loop's
part of the run configuration (LoopConfig). The trainer (trainer.py) acts on the boundaries:
evaluation points, checkpoints, the epoch's end.

Both yield one device-resident loss per step and never read it back (a host sync per step
stalls a GPU stream); the trainer reads losses in bulk every ``--log-every`` steps.

The pipeline overlaps the next batch's host-to-device copy and its sparse input all-to-all with
the current step's forward/backward. It rewrites the sharded modules' forwards, so a segment
of steps ends (``close()``, which detaches it) before anything else calls the model, e.g. an
evaluation; the next segment starts a fresh pipeline at the exact next batch. Batches in flight
were read and input-distributed but never trained on, so checkpoints and resume stay exact.
"""

import enum
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from mlet_dist.config_flags import flag, negated, switch
from mlet_dist.data.parquet_batches import LoadedBatch

PIPELINES = ("sparse-dist", "none")


@dataclass
class LoopConfig:
    """How the loop runs: epochs, evaluation points, checkpoints, logging. TrainConfig inherits
    these fields (its config.json keeps their flat keys) and is handed to the Trainer as one."""

    epochs: int = field(default=1, metadata=flag("--epochs", help="passes over the train split"))
    log_every: int = field(default=10, metadata=flag("--log-every", help="steps between train-loss records"))
    # wanted; shown only when stderr is a terminal (show_progress), as mlet-prep's
    progress: bool = field(
        default=True,
        metadata=negated(
            "--no-progress", help="no progress bars (default: shown when stderr is a terminal, never in a log file)"
        ),
    )
    checkpoint_every: int = field(
        default=0,
        metadata=flag("--checkpoint-every", help="steps between training checkpoints (0: only at epoch ends)"),
    )
    eval_every: int = field(
        default=0,
        metadata=flag(
            "--eval-every",
            help="also evaluate val/test every N global steps inside an epoch; the point with the best "
            "val AUC is the selected model (0: end of each epoch only)",
        ),
    )
    early_stop_patience: int = field(
        default=0,
        metadata=flag(
            "--early-stop-patience",
            help="stop when this many evaluation points in a row (epoch ends, and --eval-every "
            "points) bring no better val AUC; the best point is the selected model (0: train all --epochs)",
        ),
    )
    diagnostics: bool = field(
        default=False,
        metadata=switch(
            "--diagnostics",
            help="singular values / effective ranks of the MLET projections at every evaluation point "
            "(metrics.jsonl, TensorBoard) and of tables and projections in summary.json",
        ),
    )
    pipeline: str = field(
        default="sparse-dist",
        metadata=flag(
            "--pipeline",
            choices=PIPELINES,
            help="sparse-dist: TorchRec's TrainPipelineSparseDist overlaps the next batch's copy and input all-to-all "
            "with this step; none: the plain forward/backward/step loop",
        ),
    )

    @property
    def show_progress(self) -> bool:
        """Progress bars on stderr: wanted and a terminal to draw on (under torchx or in a log file
        each redraw would be a line of its own, mixing the summary into "collapsed val" bars)."""
        return self.progress and sys.stderr.isatty()

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.checkpoint_every < 0:
            raise ValueError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.eval_every < 0:
            raise ValueError(
                f"--eval-every must be >= 0 (0: evaluate at the end of each epoch only), got {self.eval_every}"
            )
        if self.early_stop_patience < 0:
            raise ValueError(
                f"--early-stop-patience must be >= 0 (0: train all epochs), got {self.early_stop_patience}"
            )
        if self.log_every < 1:
            raise ValueError(f"--log-every must be >= 1 (steps between train-loss records), got {self.log_every}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}")


class StepSegment:
    """Steps over ``batches`` until exhausted or closed; iterate for the per-step losses."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: Iterable[LoadedBatch],
        device: torch.device,
        pipeline: str,
    ) -> None:
        if pipeline not in PIPELINES:
            raise ValueError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
        self.model, self.optimizer, self.device = model, optimizer, device
        self._batches = iter(batches)
        self._pipeline: Optional[TrainPipelineSparseDist] = None
        self.pipelined_modules = 0  # sharded modules whose input dist the pipeline overlapped
        if pipeline == "sparse-dist":
            self._pipeline = TrainPipelineSparseDist(model, optimizer, device, execute_all_batches=True)

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.model.train()
        try:
            if self._pipeline is None:
                for loaded in self._batches:
                    self.optimizer.zero_grad()
                    loss, _ = self.model(loaded.batch.to(self.device, non_blocking=True))
                    loss.backward()
                    self.optimizer.step()
                    yield loss.detach()
            else:
                batches = (loaded.batch for loaded in self._batches)
                while True:
                    try:
                        output = self._pipeline.progress(batches)
                    except StopIteration:
                        return
                    self.pipelined_modules = len(self._pipeline._pipelined_modules)
                    yield output[0].detach()
        finally:
            self.close()

    def close(self) -> None:
        """Restore the model's own forwards; in-flight batches are dropped (never trained on)."""
        if self._pipeline is not None:
            self._pipeline.detach()
            self._pipeline = None
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()  # stop the reader's prefetch thread


class SegmentEnd(enum.Enum):
    """Why a segment of steps returned. run_segment checks the first four after every step, in
    this order; EARLY_STOP is the trainer's, after an EVAL_DUE point exhausted the patience."""

    FAULT = "MLET_FAULT's step on this rank (fault-tolerance tests)"
    EPOCH_END = "the epoch's last batch (the split's end or --max-train-batches)"
    EVAL_DUE = "an --eval-every point inside the epoch"
    CHECKPOINT_DUE = "a --checkpoint-every step inside the epoch"
    DATA_END = "the batches ran out before the epoch's last one"
    EARLY_STOP = "--early-stop-patience evaluation points without a better val AUC"


@dataclass
class Cursor:
    """Where training stands: the run's global step, and the epoch's next batch of ``batches``."""

    global_step: int = 0
    next_batch: int = 0
    batches: int = 0

    def advance(self) -> None:
        self.next_batch += 1
        self.global_step += 1


@dataclass(frozen=True)
class Boundaries:
    """The steps at which a segment returns (``every`` fields: 0 is never); bound once per run, so
    a step costs a few integer tests whether or not MLET_FAULT is set."""

    eval_every: int = 0
    checkpoint_every: int = 0
    fault_step: Optional[int] = None  # MLET_FAULT's step for this rank (None: unset, every normal run)

    def after(self, cursor: Cursor) -> Optional[SegmentEnd]:
        """The boundary the step just taken reached, if any (the first of SegmentEnd's order)."""
        step = cursor.global_step
        if step == self.fault_step:
            return SegmentEnd.FAULT
        if cursor.next_batch >= cursor.batches:
            return SegmentEnd.EPOCH_END
        if self.eval_every and step % self.eval_every == 0:
            return SegmentEnd.EVAL_DUE
        if self.checkpoint_every and step % self.checkpoint_every == 0:
            return SegmentEnd.CHECKPOINT_DUE
        return None


def run_segment(
    losses: Iterator[torch.Tensor], cursor: Cursor, boundaries: Boundaries, after_step: Callable[[torch.Tensor], None]
) -> SegmentEnd:
    """Take steps from ``losses`` (an iterating StepSegment) until a boundary; returns which. The
    iterator stays open: after CHECKPOINT_DUE the caller goes on with the same one. ``after_step``
    gets each step's loss once ``cursor`` counts it (the trainer's lr, tally and log)."""
    for loss in losses:
        cursor.advance()
        after_step(loss)
        end = boundaries.after(cursor)
        if end is not None:
            return end
    return SegmentEnd.DATA_END
