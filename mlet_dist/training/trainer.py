"""The training loop of a run: epochs of steps, evaluation points, best-model keeping, checkpoints.

train.py builds the pieces (data, sharded model, optimizer, run dir) and hands them here, the
way torchtitan keeps its train script a wiring file. Evaluation points are the end of every
epoch and, with ``eval_every`` > 0, every ``eval_every`` global steps inside one; the point with
the best validation AUC is the run's selected model (test AUC is logged, never used to choose).
"""

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
from mlet_dist.training.faults import maybe_fail
from mlet_dist.training.loop import StepSegment
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
class LoopConfig:
    epochs: int = 1
    eval_every: int = 0  # global steps between mid-epoch evaluations; 0: end of epoch only
    early_stop_patience: int = 0  # stop after this many evaluation points without a better val AUC; 0: never
    checkpoint_every: int = 0
    log_every: int = 10
    progress: bool = False
    spectra: bool = False  # log the spectra of the projections W at every evaluation point
    pipeline: str = "sparse-dist"  # TorchRec's TrainPipelineSparseDist, or "none": the plain loop


@dataclass
class FitResult:
    steps: int
    train_seconds: float
    evaluations: int
    stopped_early_at: Optional[int] = None  # global step, when early stopping ended training
    dead_run: Optional[Dict[str, object]] = None  # DeadRunDetector.verdict(): val AUC stuck near 0.5


class Trainer:
    def __init__(
        self, cfg: LoopConfig, env: DistEnv, model: nn.Module, optimizer: CombinedOptimizer,
        train_stream: ParquetBatchStream, evaluate: Callable[[], Metrics], out: RunDirectory,
        keeper: BestModelKeeper, checkpoints: CheckpointManager, lr_schedule: Optional[LRSchedule] = None,
    ) -> None:
        self.cfg, self.env, self.model, self.optimizer = cfg, env, model, optimizer
        self.lr_schedule = lr_schedule or LRSchedule([], LRScheduleConfig())  # default: constant lrs
        self.train_stream, self.evaluate, self.out = train_stream, evaluate, out
        self.keeper, self.checkpoints = keeper, checkpoints
        self.global_step = 0
        self.train_seconds = 0.0
        self.evaluations = 0
        self._eval_seconds = 0.0
        self._points_since_best = 0
        self.stopped_early_at: Optional[int] = None
        self.dead_run = DeadRunDetector()  # observes every evaluation point's val AUC
        self._pipeline_reported = False

    def fit(self, position: TrainPosition) -> FitResult:
        """Train from ``position`` (a fresh start or a resumed checkpoint) to the last epoch."""
        self.global_step = position.step
        self.train_seconds = float(position.extra.get("train_seconds", 0.0))
        try:
            plan, resume_batch, note = resumed_epoch(position, self.train_stream)
        except CheckpointError as err:
            raise SystemExit(f"error: {err}")
        if plan is not None and resume_batch == 0 and position.epoch < self.cfg.epochs:  # another shape
            self.out.log("resume_rows", epoch=position.epoch, rows_left=plan_rows(plan),
                         batches=self.train_stream.num_batches(plan), note=note)
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
        return FitResult(self.global_step, self.train_seconds, self.evaluations, self.stopped_early_at,
                         self.dead_run.verdict())

    def _patience_exhausted(self) -> bool:
        patience = self.cfg.early_stop_patience
        return bool(patience) and self._points_since_best >= patience

    def _run_epoch(self, epoch: int, start: int, plan: Optional[Plan]) -> None:
        """Segments of steps (one pipeline each) from batch ``start`` of ``plan`` (None: a whole
        epoch); an evaluation point ends a segment, and the next one starts at the exact next batch."""
        batches_in_epoch = self.train_stream.num_batches(plan)
        self._eval_seconds = 0.0
        losses = LossTally(self.env.rank)
        started = time.perf_counter()
        next_batch = start
        bar = tqdm(total=batches_in_epoch - start, desc=f"epoch {epoch}", unit="batch",
                   disable=not (self.cfg.progress and self.env.is_main))
        stopped = False
        while next_batch < batches_in_epoch and not stopped:
            self.lr_schedule.apply(self.global_step + 1)  # the coming step's lr, before its zero_grad
            segment = StepSegment(self.model, self.optimizer, self.train_stream.iter_from(next_batch, epoch, plan),
                                  self.env.device, self.cfg.pipeline)
            restart = False
            for loss in segment:
                next_batch += 1
                self.global_step += 1
                self.lr_schedule.apply(self.global_step + 1)  # the segment's next step runs on it
                bar.update()
                losses.add(self.global_step, epoch, next_batch - 1, loss)
                if not self._pipeline_reported:
                    self._report_pipeline(segment)
                if self.global_step % self.cfg.log_every == 0:
                    value = losses.flush()  # the one host sync, every --log-every steps
                    self.checkpoints.finish_pending()  # an async write publishes at an agreed step
                    self.out.log("train", step=self.global_step, loss=value)
                    bar.set_postfix(loss=f"{value:.4f}")
                maybe_fail("step", self.global_step, self.env.rank)
                if next_batch >= batches_in_epoch:
                    break  # the end of the epoch evaluates and checkpoints below
                if self.cfg.eval_every and self.global_step % self.cfg.eval_every == 0:
                    segment.close()  # the model's own forwards back before evaluation
                    self._evaluation_point(epoch, is_last=False, event="eval", window_loss=losses.take_window_mean())
                    stopped = self._patience_exhausted()
                    restart = not stopped
                    if restart and self._checkpoint_due():
                        self._save_checkpoint(epoch, next_batch, plan)
                    break
                if self._checkpoint_due():
                    losses.flush()  # a non-finite loss stops the run before its state is saved
                    self._save_checkpoint(epoch, next_batch, plan)
            segment.close()
            if not restart:
                break
        bar.close()
        mean_loss = losses.epoch_mean()
        seconds = time.perf_counter() - started
        steps = next_batch - start
        self.train_seconds += seconds - self._eval_seconds  # training only
        if self._patience_exhausted():  # stopped inside the epoch: that point was just evaluated
            self._stop(epoch)
            return
        metrics = self._evaluation_point(
            epoch, is_last=epoch == self.cfg.epochs - 1, event="epoch", window_loss=losses.take_window_mean(),
            train_loss=mean_loss,
            samples_per_s=steps * self.train_stream.global_batch_size / max(seconds - self._eval_seconds, 1e-9))
        self._save_checkpoint(epoch + 1, 0, None)
        if self.env.is_main:
            print(f"epoch {epoch}: train loss {mean_loss:.4f}  "
                  f"val AUC {metrics['val']['auc']:.4f}  test AUC {metrics['test']['auc']:.4f}")
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
        self.out.log("early_stop", epoch=epoch, step=self.global_step, best_step=self.keeper.best_step,
                     patience=self.cfg.early_stop_patience)
        if self.env.is_main:
            print(f"early stop at step {self.global_step}: no better val AUC in "
                  f"{self.cfg.early_stop_patience} evaluations (best: step {self.keeper.best_step})")

    def _evaluation_point(self, epoch: int, is_last: bool, event: str, window_loss: Optional[float] = None,
                          **fields: float) -> Metrics:
        started = time.perf_counter()
        self.checkpoints.finish_pending()
        metrics = self.evaluate()
        self.evaluations += 1
        best = self.keeper.offer(self.model, epoch, self.global_step, metrics, is_last=is_last)
        self._points_since_best = 0 if best else self._points_since_best + 1
        self.out.log(event, epoch=epoch, step=self.global_step, best=best, **fields, **metrics)
        val = metrics["val"]
        warning = self.dead_run.observe(self.global_step, val["auc"], val_logloss=val.get("logloss"),
                                        val_ne=val.get("ne"), train_loss=window_loss)
        if warning:
            self.out.log("dead_run", epoch=epoch, step=self.global_step, **self.dead_run.verdict())
            if self.env.is_main:
                print(warning)
        if self.cfg.spectra:
            self._log_spectra(epoch)
        self._eval_seconds += time.perf_counter() - started  # not training time
        return metrics

    def _log_spectra(self, epoch: int) -> None:
        projections = gather_full_state_dict(self.model, keep=is_projection_key)  # k×d each: small
        spectra = projection_spectra(projections) if self.env.is_main else {}
        if spectra:
            self.out.log("spectra", epoch=epoch, step=self.global_step, **spectra)

    def _save_checkpoint(self, epoch: int, batch_in_epoch: int, plan: Optional[Plan]) -> None:
        extra = {"best": self.keeper.state(), "train_seconds": self.train_seconds,
                 "points_since_best": self._points_since_best, "dead_run": self.dead_run.state(),
                 "evaluations": self.evaluations}
        self.checkpoints.save(self.model, self.optimizer, TrainPosition(
            self.global_step, epoch, batch_in_epoch, self.env.world_size, extra,
            self.train_stream.global_batch_size, self.train_stream.data_record(plan)))
