"""Evaluation: predictions gathered from all ranks, then AUC / logloss / normalized entropy /
calibration / accuracy from the project's one metrics module (data_prep.metrics)."""

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sized

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from data_prep.metrics import binary_metrics
from mlet_dist.data.parquet_batches import LoadedBatch


@dataclass
class Predictions:
    """Probabilities and labels of a whole split, in file order, identical on every rank."""

    probs: torch.Tensor
    labels: torch.Tensor

    def metrics(self) -> Dict[str, float]:
        """auc, logloss, ne, calibration, accuracy, rows (nan where a split has one class)."""
        return binary_metrics(self.probs.detach().cpu().numpy(), self.labels.detach().cpu().numpy())


def _gather_rows(local: torch.Tensor, world_size: int, rank_major: bool) -> torch.Tensor:
    """all_gather of per-rank [num_batches, B] tensors, re-ordered to global row order."""
    if world_size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local)
    if rank_major:  # each rank read one contiguous block of the split (order="local")
        return torch.stack(parts, dim=0)
    # order="exact": parts[r][b] holds rank r's slice of global batch b: interleave to [b][r].
    return torch.stack(parts, dim=1)


class _SplitRows:
    """Per-batch probabilities, labels and validity written into buffers allocated once per split.

    Keeping three small tensors per batch (the first version) grew each rank of a Kaggle-size run
    by ~1 GB over a 3.27M-row evaluation: every small long-lived allocation pinned a hole in glibc's
    heap between the step's large transient buffers (a fixed M_MMAP_THRESHOLD made the growth
    vanish: reports/scale/README.md). ``batches`` sized in advance (``len``): one allocation."""

    def __init__(self, expected_batches: int) -> None:
        self.rows: Optional[torch.Tensor] = None  # [3, batches, B]: probs, labels, valid
        self.capacity = max(1, expected_batches)
        self.count = 0

    def add(self, probs: torch.Tensor, labels: torch.Tensor, num_valid: int) -> None:
        if self.rows is None:
            self.rows = torch.zeros(3, self.capacity, probs.numel())
        elif self.count == self.rows.shape[1]:  # a stream longer than its len(): grow, rarely
            self.rows = torch.cat([self.rows, torch.zeros_like(self.rows)], dim=1)
        self.rows[0, self.count] = probs.reshape(-1)
        self.rows[1, self.count] = labels.reshape(-1)
        self.rows[2, self.count, :num_valid] = 1.0
        self.count += 1

    def stacked(self) -> List[torch.Tensor]:
        assert self.rows is not None
        return [self.rows[i, : self.count] for i in range(3)]


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[LoadedBatch],
    device: torch.device,
    world_size: int,
    desc: str = "eval",
    show_progress: bool = False,
) -> Predictions:
    """Run a DLRMTrain-style model (returns (loss, (loss, logits, labels))) over a stream.

    Every rank runs the same number of batches (the stream pads the last one), so the sharded
    model's collectives line up; padding rows are dropped after the gather.
    """
    was_training = model.training
    model.eval()
    split = _SplitRows(len(batches) if isinstance(batches, Sized) else 1)
    for loaded in tqdm(batches, desc=desc, disable=not show_progress, leave=False):
        _, (_, logits, batch_labels) = model(loaded.batch.to(device))
        split.add(torch.sigmoid(logits.float()).cpu(), batch_labels.float().cpu(), loaded.num_valid)
    model.train(was_training)
    if not split.count:
        return Predictions(torch.empty(0), torch.empty(0))
    rank_major = bool(getattr(batches, "rank_major", False))
    gathered = [_gather_rows(t.to(device), world_size, rank_major).cpu() for t in split.stacked()]
    keep = gathered[2].reshape(-1) > 0
    return Predictions(gathered[0].reshape(-1)[keep], gathered[1].reshape(-1)[keep])
