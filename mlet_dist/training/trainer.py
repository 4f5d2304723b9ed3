"""The training loop of a run: epochs of steps, evaluation points, best-model keeping, checkpoints.

train.py builds the pieces (data, sharded model, optimizer, run dir) and hands them here, the
way torchtitan keeps its train script a wiring file. Evaluation points are the end of every
epoch and, with ``eval_every`` > 0, every ``eval_every`` global steps inside one; the point with
the best validation AUC is the run's selected model (test AUC is logged, never used to choose).
"""

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from torch import nn
from torchrec.optim.keyed import CombinedOptimizer

from mlet_dist.data.parquet_batches import ParquetBatchStream
from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.state import gather_full_state_dict
from mlet_dist.errors import UserError
from mlet_dist.training.best_model import BestModelKeeper
from mlet_dist.training.checkpoint import CheckpointError, CheckpointManager, TrainPosition
from mlet_dist.training.diagnostics import is_projection_key, projection_spectra
from mlet_dist.training.faults import maybe_fail
from mlet_dist.training.loop import train_epoch
from mlet_dist.training.run_dir import RunDirectory

Metrics = Dict[str, Dict[str, float]]  # split -> metric -> value


class NonFiniteLossError(UserError):
    """Training diverged (or met a value the data checks could not see)."""


@dataclass
class LoopConfig:
    epochs: int = 1
    eval_every: int = 0  # global steps between mid-epoch evaluations; 0: end of epoch only
    early_stop_patience: int = 0  # stop after this many evaluation points without a better val AUC; 0: never
    checkpoint_every: int = 0
    log_every: int = 10
    progress: bool = False
    spectra: bool = False  # log the spectra of the projections W at every evaluation point


@dataclass
class FitResult:
    steps: int
    train_seconds: float
    evaluations: int
    stopped_early_at: Optional[int] = None  # global step, when early stopping ended training


class Trainer:
    def __init__(
        self, cfg: LoopConfig, env: DistEnv, model: nn.Module, optimizer: CombinedOptimizer,
        train_stream: ParquetBatchStream, evaluate: Callable[[], Metrics], out: RunDirectory,
        keeper: BestModelKeeper, checkpoints: CheckpointManager,
    ) -> None:
        self.cfg, self.env, self.model, self.optimizer = cfg, env, model, optimizer
        self.train_stream, self.evaluate, self.out = train_stream, evaluate, out
        self.keeper, self.checkpoints = keeper, checkpoints
        self.global_step = 0
        self.train_seconds = 0.0
        self.evaluations = 0
        self._eval_seconds = 0.0
        self._points_since_best = 0
        self.stopped_early_at: Optional[int] = None

    def fit(self, position: TrainPosition) -> FitResult:
        """Train from ``position`` (a fresh start or a resumed checkpoint) to the last epoch."""
        self.global_step = position.step
        self.train_seconds = float(position.extra.get("train_seconds", 0.0))
        try:
            resume_batch = position.start_batch_for(self.train_stream.global_batch_size)
        except CheckpointError as err:
            raise SystemExit(f"error: {err}")
        self._points_since_best = int(position.extra.get("points_since_best", 0))
        for epoch in range(position.epoch, self.cfg.epochs):
            self._run_epoch(epoch, resume_batch if epoch == position.epoch else 0)
            if self.stopped_early_at is not None:
                break
        return FitResult(self.global_step, self.train_seconds, self.evaluations, self.stopped_early_at)

    def _patience_exhausted(self) -> bool:
        patience = self.cfg.early_stop_patience
        return bool(patience) and self._points_since_best >= patience

    def _run_epoch(self, epoch: int, start: int) -> None:
        batches_in_epoch = len(self.train_stream)
        self._eval_seconds = 0.0

        def on_step(step: int, loss: float) -> bool:
            self.global_step += 1
            if not math.isfinite(loss):  # before any log line or checkpoint of this step
                raise NonFiniteLossError(
                    f"training loss is {loss} at global step {self.global_step} (epoch {epoch}, batch "
                    f"{start + step - 1} of the epoch, rank {self.env.rank}); nothing of this step was saved. "
                    "Lower --embedding-lr / --dense-lr, or check the data"
                )
            if self.global_step % self.cfg.log_every == 0:
                self.out.log("train", step=self.global_step, loss=loss)
            maybe_fail("step", self.global_step, self.env.rank)
            next_batch = start + step
            if next_batch >= batches_in_epoch:
                return False  # the end of the epoch evaluates and checkpoints below
            if self.cfg.eval_every and self.global_step % self.cfg.eval_every == 0:
                self._evaluation_point(epoch, is_last=False, event="eval")
                if self._patience_exhausted():
                    return True
            if self.cfg.checkpoint_every and self.global_step % self.cfg.checkpoint_every == 0:
                self._save_checkpoint(epoch, next_batch)
            return False

        stats = train_epoch(self.model, self.optimizer, self.train_stream.iter_from(start), self.env.device,
                            self.env.world_size, on_step, show_progress=self.cfg.progress and self.env.is_main,
                            desc=f"epoch {epoch}", total=batches_in_epoch - start)
        self.train_seconds += stats.seconds - self._eval_seconds  # training only
        if self._patience_exhausted():  # stopped inside the epoch: that point was just evaluated
            self._stop(epoch)
            return
        metrics = self._evaluation_point(
            epoch, is_last=epoch == self.cfg.epochs - 1, event="epoch", train_loss=stats.mean_loss,
            samples_per_s=stats.samples / max(stats.seconds, 1e-9))
        self._save_checkpoint(epoch + 1, 0)
        if self.env.is_main:
            print(f"epoch {epoch}: train loss {stats.mean_loss:.4f}  "
                  f"val AUC {metrics['val']['auc']:.4f}  test AUC {metrics['test']['auc']:.4f}")
        if self._patience_exhausted() and epoch < self.cfg.epochs - 1:
            self._stop(epoch)

    def _stop(self, epoch: int) -> None:
        self.stopped_early_at = self.global_step
        self.out.log("early_stop", epoch=epoch, step=self.global_step, best_step=self.keeper.best_step,
                     patience=self.cfg.early_stop_patience)
        if self.env.is_main:
            print(f"early stop at step {self.global_step}: no better val AUC in "
                  f"{self.cfg.early_stop_patience} evaluations (best: step {self.keeper.best_step})")

    def _evaluation_point(self, epoch: int, is_last: bool, event: str, **fields: float) -> Metrics:
        started = time.perf_counter()
        metrics = self.evaluate()
        self.evaluations += 1
        best = self.keeper.offer(self.model, epoch, self.global_step, metrics, is_last=is_last)
        self._points_since_best = 0 if best else self._points_since_best + 1
        self.out.log(event, epoch=epoch, step=self.global_step, best=best, **fields, **metrics)
        if self.cfg.spectra:
            self._log_spectra(epoch)
        self._eval_seconds += time.perf_counter() - started  # not training time
        return metrics

    def _log_spectra(self, epoch: int) -> None:
        projections = gather_full_state_dict(self.model, keep=is_projection_key)  # k×d each: small
        spectra = projection_spectra(projections) if self.env.is_main else {}
        if spectra:
            self.out.log("spectra", epoch=epoch, step=self.global_step, **spectra)

    def _save_checkpoint(self, epoch: int, batch_in_epoch: int) -> None:
        extra = {"best": self.keeper.state(), "train_seconds": self.train_seconds,
                 "points_since_best": self._points_since_best}
        self.checkpoints.save(self.model, self.optimizer, TrainPosition(
            self.global_step, epoch, batch_in_epoch, self.env.world_size, extra,
            self.train_stream.global_batch_size))
