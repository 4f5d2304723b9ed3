"""training.evaluation.predict keeps each split's rows in buffers allocated once (not three small
tensors per batch, which fragmented glibc's heap by ~1 GB per rank over a Kaggle-size evaluation:
reports/scale/README.md): the rows come back in order, padding dropped, whether the stream knows
its length, does not, or says fewer batches than it yields."""

from typing import List, Tuple

import pytest
import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mlet_dist.data.parquet_batches import LoadedBatch
from mlet_dist.training.evaluation import predict

B = 4


class FirstDenseIsTheLogit(nn.Module):
    """A DLRMTrain-shaped model: (loss, (loss, logits, labels)), logit = first dense feature."""

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = batch.dense_features[:, 0]
        loss = logits.sum()
        return loss, (loss, logits, batch.labels)


def batches(valid_rows: List[int]) -> List[LoadedBatch]:
    """Batches of B rows, the first ``valid`` of each real (logit = a running row number / 10)."""
    out, row = [], 0
    for valid in valid_rows:
        logits = torch.arange(row, row + B, dtype=torch.float32) / 10
        labels = (torch.arange(row, row + B) % 2).float()
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["f"], values=torch.zeros(B, dtype=torch.long), lengths=torch.ones(B, dtype=torch.int32)
        )
        out.append(LoadedBatch(Batch(dense_features=logits[:, None], sparse_features=kjt, labels=labels), valid))
        row += valid
    return out


class ShortLen(list):
    """A stream whose len() says fewer batches than it yields."""

    def __len__(self) -> int:
        return 1


@pytest.mark.parametrize("kind", ["sized", "generator", "short_len"])
def test_rows_in_order_padding_dropped(kind: str) -> None:
    loaded = batches([B, B, B, 2])  # 14 real rows, the last batch padded with 2
    stream = {"sized": lambda: loaded, "generator": lambda: iter(loaded), "short_len": lambda: ShortLen(loaded)}[kind]()
    got = predict(FirstDenseIsTheLogit(), stream, torch.device("cpu"), world_size=1)
    rows = torch.arange(14, dtype=torch.float32)
    assert torch.equal(got.probs, torch.sigmoid(rows / 10))
    assert torch.equal(got.labels, (rows % 2).float())


def test_no_batches_gives_empty_predictions() -> None:
    got = predict(FirstDenseIsTheLogit(), iter(()), torch.device("cpu"), world_size=1)
    assert got.probs.numel() == 0 and got.labels.numel() == 0
