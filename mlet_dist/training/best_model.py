"""Keep the weights of the evaluation point with the best validation AUC (never chosen by test).

An evaluation point is the end of an epoch or, with ``--eval-every N``, every N global steps
inside one: in the one-epoch regime common for click data (a second pass over the rows
overfits), selecting inside the epoch is the only selection there is.

The sharded state is written with torch.distributed.checkpoint (DCP), each rank its own shards,
to ``best_model/step-<global step>``, only when a point improves and is not the last one (the
live model already is the last). A run extended past its last point (more ``--epochs``) snapshots
that point when it resumes, while the live weights still are it; a best point whose snapshot is
gone anyway (deleted, or a checkpoint from before that rule) or fails its checksums (a flipped
byte would otherwise become the selected, collapsed and exported model) leaves the last point
selected, with a warning naming why, instead of failing every rerun.
"""

import math
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.exact_save import ExactStorageSavePlanner
from mlet_dist.distributed.safe_dcp import safe_load
from mlet_dist.training.checkpoint_digest import agreed_verdict, record_checksums, verify_share


def best_model_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step}"


class BestModelKeeper:
    def __init__(self, directory: Path, env: DistEnv) -> None:
        self.directory = Path(directory)
        self.env = env
        self.best_epoch: Optional[int] = None
        self.best_step: Optional[int] = None
        self.best_metrics: Dict[str, Dict[str, float]] = {}
        self._best_auc = -math.inf
        self._saved_step: Optional[int] = None
        self._last_step: Optional[int] = None
        self._last_epoch: Optional[int] = None

    def offer(
        self, model: nn.Module, epoch: int, step: int, metrics: Dict[str, Dict[str, float]], is_last: bool
    ) -> bool:
        """Record an evaluation point; True when it is the new best."""
        self._last_step, self._last_epoch = step, epoch
        auc = metrics["val"]["auc"]
        if self.best_step is not None and not auc > self._best_auc:
            return False
        self.best_epoch, self.best_step, self.best_metrics, self._best_auc = epoch, step, metrics, auc
        if not is_last:
            self._save(model, step)
        return True

    def state(self) -> Dict[str, Any]:
        """JSON-able, for training checkpoints."""
        return {
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "best_metrics": self.best_metrics,
            "best_auc": self._best_auc if math.isfinite(self._best_auc) else None,
            "saved_step": self._saved_step,
            "last_step": self._last_step,
            "last_epoch": self._last_epoch,
        }

    def load_state(self, state: Dict[str, Any]) -> None:
        if not state:
            return
        self.best_epoch, self.best_step = state["best_epoch"], state.get("best_step")
        self.best_metrics = state["best_metrics"]
        self._best_auc = state["best_auc"] if state["best_auc"] is not None else -math.inf
        self._saved_step, self._last_step = state.get("saved_step"), state.get("last_step")
        self._last_epoch = state.get("last_epoch")

    def _has_snapshot(self, step: int) -> bool:
        return (best_model_path(self.directory, step) / ".metadata").is_file()

    def keep_resumed_best(self, model: nn.Module, step: int) -> None:
        """Resumed at ``step`` with training to come (collective): a best point that was the last
        one had no snapshot (the live model was it); save it now, before training moves on."""
        if self.best_step == step and not self._has_snapshot(step):
            self._save(model, step)

    def _save(self, model: nn.Module, step: int) -> None:
        path = best_model_path(self.directory, step)
        dcp.save(model.state_dict(), checkpoint_id=str(path), planner=ExactStorageSavePlanner())
        dist.barrier()
        record_checksums(path, self.env.rank, self.env.world_size, self.env.is_main)  # mlet-collapse verifies
        if self.env.is_main and self._saved_step is not None and self._saved_step != step:
            shutil.rmtree(best_model_path(self.directory, self._saved_step), ignore_errors=True)
        self._saved_step = step

    def restore_best(self, model: nn.Module) -> bool:
        """Load the best point's weights back into the live model if a later point was worse
        (collective). False: its snapshot is gone or damaged, so the live (last) point is selected
        instead and its metrics are unknown here (``best_metrics`` is emptied: the caller
        evaluates it)."""
        if self.best_step is None or self.best_step == self._last_step:
            return True
        path = best_model_path(self.directory, self.best_step)
        if not self._has_snapshot(self.best_step):
            return self._select_last(f"the best point's snapshot {path} is gone")
        damage = agreed_verdict(verify_share(path, self.env.rank, self.env.world_size))
        if damage:
            return self._select_last(f"the best point's snapshot {path} is damaged ({damage})")
        state = model.state_dict()
        safe_load(state, path)  # data, never code
        model.load_state_dict(state)
        return True

    def _select_last(self, why: str) -> bool:
        if self.env.is_main:
            print(
                f"warning: {why}; the selected model is the last point (step {self._last_step}) instead",
                file=sys.stderr,
                flush=True,
            )
        self.best_epoch, self.best_step, self.best_metrics = self._last_epoch, self._last_step, {}
        return False
