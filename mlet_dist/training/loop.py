"""Training steps: the plain loop, or TorchRec's ``TrainPipelineSparseDist``.

Both yield one device-resident loss per step and never read it back (a host sync per step
stalls a GPU stream); the trainer reads losses in bulk every ``--log-every`` steps.

The pipeline overlaps the next batch's host-to-device copy and its sparse input all-to-all with
the current step's forward/backward. It rewrites the sharded modules' forwards, so a segment
of steps ends (``close()``, which detaches it) before anything else calls the model, e.g. an
evaluation; the next segment starts a fresh pipeline at the exact next batch. Batches in flight
were read and input-distributed but never trained on, so checkpoints and resume stay exact.
"""

from typing import Iterable, Iterator, Optional

import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from mlet_dist.data.parquet_batches import LoadedBatch

PIPELINES = ("sparse-dist", "none")


class StepSegment:
    """Steps over ``batches`` until exhausted or closed; iterate for the per-step losses."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[LoadedBatch],
                 device: torch.device, pipeline: str) -> None:
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
                    self.pipelined_modules = len(self._pipeline._pipelined_modules)  # type: ignore[union-attr]
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
