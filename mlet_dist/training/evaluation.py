"""Evaluation: predictions gathered from all ranks, then AUC / logloss / normalized entropy /
calibration / accuracy from the project's one metrics module (data_prep.metrics)."""

from dataclasses import dataclass
from typing import Dict, Iterable

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
    probs, labels, valid = [], [], []
    for loaded in tqdm(batches, desc=desc, disable=not show_progress, leave=False):
        _, (_, logits, batch_labels) = model(loaded.batch.to(device))
        probs.append(torch.sigmoid(logits.float()).cpu())
        labels.append(batch_labels.float().cpu())
        mask = torch.zeros(batch_labels.shape[0])
        mask[: loaded.num_valid] = 1.0
        valid.append(mask)
    model.train(was_training)
    if not probs:
        return Predictions(torch.empty(0), torch.empty(0))
    stacked = [torch.stack(x) for x in (probs, labels, valid)]
    rank_major = bool(getattr(batches, "rank_major", False))
    gathered = [_gather_rows(t.to(device), world_size, rank_major).cpu() for t in stacked]
    keep = gathered[2].reshape(-1) > 0
    return Predictions(gathered[0].reshape(-1)[keep], gathered[1].reshape(-1)[keep])
