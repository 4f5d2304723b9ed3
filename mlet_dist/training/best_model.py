"""Keep the weights of the epoch with the best validation AUC (never chosen by test).

The sharded state is written with torch.distributed.checkpoint (DCP), each rank its own shards,
only when an epoch improves and is not the last one (the live model already is the last).
"""

import math
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from mlet_dist.distributed.env import DistEnv


class BestModelKeeper:
    def __init__(self, directory: Path, env: DistEnv) -> None:
        self.directory = Path(directory)
        self.env = env
        self.best_epoch: Optional[int] = None
        self.best_metrics: Dict[str, Dict[str, float]] = {}
        self._best_auc = -math.inf
        self._saved_epoch: Optional[int] = None
        self._last_epoch: Optional[int] = None

    def offer(self, model: nn.Module, epoch: int, metrics: Dict[str, Dict[str, float]], is_last: bool) -> None:
        self._last_epoch = epoch
        auc = metrics["val"]["auc"]
        if self.best_epoch is not None and not auc > self._best_auc:
            return
        self.best_epoch, self.best_metrics, self._best_auc = epoch, metrics, auc
        if not is_last:
            self._save(model, epoch)

    def state(self) -> Dict[str, Any]:
        """JSON-able, for training checkpoints."""
        return {"best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                "best_auc": self._best_auc if math.isfinite(self._best_auc) else None,
                "saved_epoch": self._saved_epoch, "last_epoch": self._last_epoch}

    def load_state(self, state: Dict[str, Any]) -> None:
        if not state:
            return
        self.best_epoch, self.best_metrics = state["best_epoch"], state["best_metrics"]
        self._best_auc = state["best_auc"] if state["best_auc"] is not None else -math.inf
        self._saved_epoch, self._last_epoch = state["saved_epoch"], state["last_epoch"]

    def _path(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch}"

    def _save(self, model: nn.Module, epoch: int) -> None:
        dcp.save(model.state_dict(), checkpoint_id=str(self._path(epoch)))
        dist.barrier()
        if self.env.is_main and self._saved_epoch is not None:
            shutil.rmtree(self._path(self._saved_epoch), ignore_errors=True)
        self._saved_epoch = epoch

    def restore_best(self, model: nn.Module) -> None:
        """Load the best epoch's weights back into the live model if a later epoch was worse."""
        if self.best_epoch is None or self.best_epoch == self._last_epoch:
            return
        state = model.state_dict()
        dcp.load(state, checkpoint_id=str(self._path(self.best_epoch)))
        model.load_state_dict(state)
