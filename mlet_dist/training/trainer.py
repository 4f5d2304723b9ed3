"""The training loop of a run: epochs of steps, evaluation points, best-model keeping, checkpoints.

train.py builds the pieces (data, sharded model, optimizer, run dir) and hands them here, the
way torchtitan keeps its train script a wiring file. The steps themselves run in segments
(loop.py's run_segment), each returning why it stopped; an epoch acts on that reason. Evaluation points are the end of every
epoch and, with ``eval_every`` > 0, every ``eval_every`` global steps inside one; the point with
the best validation AUC is the run's selected model (test AUC is logged, never used to choose).
"""

import functools
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer
from tqdm import tqdm

from mlet_dist.data.epoch_plan import Plan, plan_rows
from mlet_dist.data.parquet_batches import ParquetBatchStream
from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.state import gather_full_state_dict
from mlet_dist.errors import UserError
from mlet_dist.training.best_model import BestModelKeeper
from mlet_dist.training.checkpoint import CheckpointError, CheckpointManager, TrainPosition
from mlet_dist.training.data_position import resumed_epoch
from mlet_dist.training.dead_run import DeadRunDetector
from mlet_dist.training.diagnostics import is_projection_key, projection_spectra
from mlet_dist.training.faults import planned_fault
from mlet_dist.training.loop import Boundaries, Cursor, LoopConfig, SegmentEnd, StepSegment, run_segment
from mlet_dist.training.lr_schedule import LRSchedule, LRScheduleConfig
from mlet_dist.training.run_dir import RunDirectory

Metrics = Dict[str, Dict[str, float]]  # split -> metric -> value


class NonFiniteLossError(UserError):
    """Training diverged (or met a value the data checks could not see)."""


class LossTally:
    """Per-step losses kept on the device and read back in bulk (one host sync per flush)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self._pending: List[Tuple[int, int, int, torch.Tensor]] = []  # (global step, epoch, batch, loss)
        self._sum, self._count, self._last = 0.0, 0, float("nan")
        self._window_sum, self._window_count = 0.0, 0  # since the last evaluation point (dead-run detector)

    def add(self, step: int, epoch: int, batch: int, loss: torch.Tensor) -> None:
        self._pending.append((step, epoch, batch, loss))

    def flush(self) -> float:
        """Read the pending losses; the latest one. A non-finite one stops the run, naming its step."""
        if not self._pending:
            return self._last
        values = torch.stack([p[3].float() for p in self._pending]).cpu()
        bad = torch.nonzero(~torch.isfinite(values))
        if len(bad):
            step, epoch, batch, _ = self._pending[int(bad[0])]
            raise NonFiniteLossError(
                f"training loss is {float(values[int(bad[0])])} at global step {step} (epoch {epoch}, batch "
                f"{batch} of the epoch, rank {self.rank}); nothing from that step on was saved. "
                "Lower --embedding-lr / --dense-lr, or check the data"
            )
        self._sum += float(values.double().sum())
        self._count += len(values)
        self._window_sum += float(values.double().sum())
        self._window_count += len(values)
        self._last = float(values[-1])
        self._pending.clear()
        return self._last

    def take_window_mean(self) -> Optional[float]:
        """This rank's mean loss since the previous call (None: no step since), then reset."""
        self.flush()
        mean = self._window_sum / self._window_count if self._window_count else None
        self._window_sum, self._window_count = 0.0, 0
        return mean

    def epoch_mean(self) -> float:
        self.flush()
        return self._sum / max(self._count, 1)


@dataclass
class FitResult:
    steps: int
    train_seconds: float
    evaluations: int
    stopped_early_at: Optional[int] = None  # global step, when early stopping ended training
    dead_run: Optional[Dict[str, object]] = None  # DeadRunDetector.verdict(): val AUC stuck near 0.5


@dataclass
class _EpochRun:
    """What the steps of one epoch share: its number and row plan, loss tally and progress bar."""

    epoch: int
    plan: Optional[Plan]
    losses: LossTally
    bar: tqdm


class Trainer:
    def __init__(
        self,
        cfg: LoopConfig,
        env: DistEnv,
        model: nn.Module,
        optimizer: CombinedOptimizer,
        train_stream: ParquetBatchStream,
        evaluate: Callable[[], Metrics],
        out: RunDirectory,
        keeper: BestModelKeeper,
        checkpoints: CheckpointManager,
        lr_schedule: Optional[LRSchedule] = None,
    ) -> None:
        self.cfg, self.env, self.model, self.optimizer = cfg, env, model, optimizer
        self.lr_schedule = lr_schedule or LRSchedule([], LRScheduleConfig())  # default: constant lrs
        self.train_stream, self.evaluate, self.out = train_stream, evaluate, out
        self.keeper, self.checkpoints = keeper, checkpoints
        self.cursor = Cursor()
        self._fault = planned_fault("step", env.rank)  # read once: None in every normal run
        self.boundaries = Boundaries(
            cfg.eval_every, cfg.checkpoint_every, None if self._fault is None else self._fault.step
        )
        self.train_seconds = 0.0
        self.evaluations = 0
        self._eval_seconds = 0.0
        self._points_since_best = 0
        self.stopped_early_at: Optional[int] = None
        self.dead_run = DeadRunDetector()  # observes every evaluation point's val AUC
        self._pipeline_reported = False

    @property
    def global_step(self) -> int:
        return self.cursor.global_step

    def fit(self, position: TrainPosition) -> FitResult:
        """Train from ``position`` (a fresh start or a resumed checkpoint) to the last epoch."""
        self.cursor.global_step = position.step
        self.train_seconds = float(position.extra.get("train_seconds", 0.0))
        try:
            plan, resume_batch, note = resumed_epoch(position, self.train_stream)
        except CheckpointError as err:
            raise SystemExit(f"error: {err}")
        if plan is not None and resume_batch == 0 and position.epoch < self.cfg.epochs:  # another shape
            self.out.log(
                "resume_rows",
                epoch=position.epoch,
                rows_left=plan_rows(plan),
                batches=self.train_stream.num_batches(plan),
                note=note,
            )
            if note and self.env.is_main:
                print(f"warning: resuming epoch {position.epoch} in another shape: {note}")
        self._points_since_best = int(position.extra.get("points_since_best", 0))
        self.evaluations = int(position.extra.get("evaluations", 0))  # the summary counts the whole run's points
        self.dead_run.load_state(position.extra.get("dead_run", {}))
        for epoch in range(position.epoch, self.cfg.epochs):
            resumed = epoch == position.epoch
            self._run_epoch(epoch, resume_batch if resumed else 0, plan if resumed else None)
            if self.stopped_early_at is not None:
                break
        self.checkpoints.finish_pending()
        return FitResult(
            self.global_step, self.train_seconds, self.evaluations, self.stopped_early_at, self.dead_run.verdict()
        )

    def _patience_exhausted(self) -> bool:
        patience = self.cfg.early_stop_patience
        return bool(patience) and self._points_since_best >= patience

    def _run_epoch(self, epoch: int, start: int, plan: Optional[Plan]) -> None:
        """The epoch's steps from batch ``start`` of ``plan`` (None: a whole epoch), then its
        evaluation point and checkpoint, unless early stopping ended it inside."""
        self.cursor.next_batch, self.cursor.batches = start, self.train_stream.num_batches(plan)
        self._eval_seconds = 0.0
        run = _EpochRun(
            epoch,
            plan,
            LossTally(self.env.rank),
            tqdm(
                total=self.cursor.batches - start,
                desc=f"epoch {epoch}",
                unit="batch",
                disable=not (self.cfg.show_progress and self.env.is_main),
            ),
        )
        started = time.perf_counter()
        end = self._train_steps(run)
        run.bar.close()
        mean_loss = run.losses.epoch_mean()
        train_seconds = time.perf_counter() - started - self._eval_seconds  # training only
        self.train_seconds += train_seconds
        # the second test: a run resumed after it stopped early trains one more epoch, then stops unevaluated
        if end is SegmentEnd.EARLY_STOP or self._patience_exhausted():
            self._stop(epoch)
            return
        samples = (self.cursor.next_batch - start) * self.train_stream.global_batch_size
        self._end_epoch(run, mean_loss, samples / max(train_seconds, 1e-9))

    def _train_steps(self, run: _EpochRun) -> SegmentEnd:
        """Segments of steps to the epoch's end (EPOCH_END, or DATA_END) or to an evaluation point
        that exhausts the patience (EARLY_STOP); after any other evaluation point the next segment
        starts a fresh pipeline at the exact next batch."""
        end = SegmentEnd.EPOCH_END  # resumed at the epoch's last batch: nothing left to train
        while self.cursor.next_batch < self.cursor.batches:
            end = self._segment(run)
            if end is not SegmentEnd.EVAL_DUE:
                return end
            if self._evaluate_inside_epoch(run):
                return SegmentEnd.EARLY_STOP
        return end

    def _segment(self, run: _EpochRun) -> SegmentEnd:
        """One StepSegment (one pipeline) from the epoch's next batch to its first boundary but a
        checkpoint (saved on the way, the pipeline going on); closed when it returns, so that an
        evaluation finds the model's own forwards."""
        self.lr_schedule.apply(self.global_step + 1)  # the coming step's lr, before its zero_grad
        segment = StepSegment(
            self.model,
            self.optimizer,
            self.train_stream.iter_from(self.cursor.next_batch, run.epoch, run.plan),
            self.env.device,
            self.cfg.pipeline,
        )
        losses = iter(segment)
        after_step = functools.partial(self._after_step, run, segment)
        end = run_segment(losses, self.cursor, self.boundaries, after_step)
        while end is SegmentEnd.CHECKPOINT_DUE:
            run.losses.flush()  # a non-finite loss stops the run before its state is saved
            self._save_checkpoint(run.epoch, self.cursor.next_batch, run.plan)
            end = run_segment(losses, self.cursor, self.boundaries, after_step)
        if end is SegmentEnd.FAULT and self._fault is not None:
            self._fault.fire()
        segment.close()
        return end

    def _after_step(self, run: _EpochRun, segment: StepSegment, loss: torch.Tensor) -> None:
        """Per-step bookkeeping, no host sync but every --log-every steps: the next step's lr, the
        loss tally, the progress bar, the pipeline report (once) and the train-loss record."""
        step = self.global_step
        self.lr_schedule.apply(step + 1)  # the segment's next step runs on it
        run.bar.update()
        run.losses.add(step, run.epoch, self.cursor.next_batch - 1, loss)
        if not self._pipeline_reported:
            self._report_pipeline(segment)
        if step % self.cfg.log_every == 0:
            value = run.losses.flush()  # the one host sync, every --log-every steps
            self.checkpoints.finish_pending()  # an async write publishes at an agreed step
            self.out.log("train", step=step, loss=value)
            run.bar.set_postfix(loss=f"{value:.4f}")

    def _evaluate_inside_epoch(self, run: _EpochRun) -> bool:
        """An --eval-every point; True when it exhausts the patience (no checkpoint then), else a
        checkpoint due at this step is written before the next segment."""
        self._evaluation_point(run.epoch, is_last=False, event="eval", window_loss=run.losses.take_window_mean())
        if self._patience_exhausted():
            return True
        if self._checkpoint_due():
            self._save_checkpoint(run.epoch, self.cursor.next_batch, run.plan)
        return False

    def _end_epoch(self, run: _EpochRun, mean_loss: float, samples_per_s: float) -> None:
        """The epoch's evaluation point and checkpoint; early stop when the patience runs out
        before the last epoch."""
        epoch = run.epoch
        metrics = self._evaluation_point(
            epoch,
            is_last=epoch == self.cfg.epochs - 1,
            event="epoch",
            window_loss=run.losses.take_window_mean(),
            train_loss=mean_loss,
            samples_per_s=samples_per_s,
        )
        self._save_checkpoint(epoch + 1, 0, None)
        if self.env.is_main:
            print(
                f"epoch {epoch}: train loss {mean_loss:.4f}  "
                f"val AUC {metrics['val']['auc']:.4f}  test AUC {metrics['test']['auc']:.4f}"
            )
        if self._patience_exhausted() and epoch < self.cfg.epochs - 1:
            self._stop(epoch)

    def _report_pipeline(self, segment: StepSegment) -> None:
        """Say once whether the pipeline found sharded modules to overlap (0: it runs, but as
        the plain loop: the model's sparse inputs are not plain attributes of the batch)."""
        self._pipeline_reported = True
        if self.cfg.pipeline == "none":
            return
        self.out.log("pipeline", kind=self.cfg.pipeline, pipelined_modules=segment.pipelined_modules)
        if segment.pipelined_modules == 0 and self.env.is_main:
            print("warning: --pipeline found no sharded module to pipeline; steps run unoverlapped")

    def _checkpoint_due(self) -> bool:
        return bool(self.cfg.checkpoint_every) and self.global_step % self.cfg.checkpoint_every == 0

    def _stop(self, epoch: int) -> None:
        self.stopped_early_at = self.global_step
        self.out.log(
            "early_stop",
            epoch=epoch,
            step=self.global_step,
            best_step=self.keeper.best_step,
            patience=self.cfg.early_stop_patience,
        )
        if self.env.is_main:
            print(
                f"early stop at step {self.global_step}: no better val AUC in "
                f"{self.cfg.early_stop_patience} evaluations (best: step {self.keeper.best_step})"
            )

    def _evaluation_point(
        self, epoch: int, is_last: bool, event: str, window_loss: Optional[float] = None, **fields: float
    ) -> Metrics:
        started = time.perf_counter()
        self.checkpoints.finish_pending()
        metrics = self.evaluate()
        self.evaluations += 1
        best = self.keeper.offer(self.model, epoch, self.global_step, metrics, is_last=is_last)
        self._points_since_best = 0 if best else self._points_since_best + 1
        self.out.log(event, epoch=epoch, step=self.global_step, best=best, **fields, **metrics)
        val = metrics["val"]
        warning = self.dead_run.observe(
            self.global_step, val["auc"], val_logloss=val.get("logloss"), val_ne=val.get("ne"), train_loss=window_loss
        )
        if warning:
            self.out.log("dead_run", epoch=epoch, step=self.global_step, **self.dead_run.verdict())
            if self.env.is_main:
                print(warning)
        if self.cfg.diagnostics:
            self._log_spectra(epoch)
        self._eval_seconds += time.perf_counter() - started  # not training time
        return metrics

    def _log_spectra(self, epoch: int) -> None:
        projections = gather_full_state_dict(self.model, keep=is_projection_key)  # k×d each: small
        spectra = projection_spectra(projections) if self.env.is_main else {}
        if spectra:
            self.out.log("spectra", epoch=epoch, step=self.global_step, **spectra)

    def _save_checkpoint(self, epoch: int, batch_in_epoch: int, plan: Optional[Plan]) -> None:
        extra = {
            "best": self.keeper.state(),
            "train_seconds": self.train_seconds,
            "points_since_best": self._points_since_best,
            "dead_run": self.dead_run.state(),
            "evaluations": self.evaluations,
        }
        self.checkpoints.save(
            self.model,
            self.optimizer,
            TrainPosition(
                self.global_step,
                epoch,
                batch_in_epoch,
                self.env.world_size,
                extra,
                self.train_stream.global_batch_size,
                self.train_stream.data_record(plan),
            ),
        )
