"""Score a split of a prepared parquet dataset with a serving model, in batches.

The reader is a small cousin of ``ParquetBatchStream`` for one process: the label column is
optional (unlabeled data is scored, metrics are skipped), the last batch is simply short, and ids
are bound-checked against the *serving* tables (fbgemm kernels do not check them). Single- and
multi-hot columns become the same KeyedJaggedTensor as in training (``data/bags.py``).
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Protocol, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from tqdm import tqdm

from mlet_dist.data.bags import build_kjt, check_bags, check_column_type
from mlet_dist.data.parquet_batches import DatasetMeta
from mlet_dist.errors import DatasetError
from mlet_dist.training.evaluation import Predictions

PathLike = Union[str, Path]


@dataclass
class ScoringBatch:
    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: Optional[torch.Tensor]

    @property
    def rows(self) -> int:
        return int(self.dense.shape[0])


class ScoringStream:
    def __init__(
        self,
        data_dir: PathLike,
        split: str,
        batch_size: int,
        rows_per_feature: Dict[str, int],
        max_batches: Optional[int] = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.meta = DatasetMeta.load(data_dir)
        if split not in self.meta.split_files:
            raise ValueError(f"unknown split {split!r}; the dataset has {sorted(self.meta.split_files)}")
        missing = sorted(set(rows_per_feature) - set(self.meta.sparse_features))
        if missing:
            raise ValueError(f"the dataset lacks the model's sparse features {missing}")
        self.split, self.batch_size, self.max_batches = split, batch_size, max_batches
        self.rows_per_feature = rows_per_feature
        self.features = [f for f in self.meta.sparse_features if f in rows_per_feature]
        self.files = self.meta.split_files[split]
        self.has_labels = True
        rows = 0
        for path in self.files:
            if not path.is_file():
                raise FileNotFoundError(f"dataset part file not found: {path}")
            with pq.ParquetFile(path) as pf:
                names = pf.schema_arrow.names
                absent = [c for c in [*self.meta.dense_features, *self.features] if c not in names]
                if absent:
                    raise ValueError(f"{path}: missing columns {absent}")
                self.has_labels &= self.meta.label in names
                rows += pf.metadata.num_rows
        self.num_rows = rows

    def __len__(self) -> int:
        n = -(-self.num_rows // self.batch_size)
        return n if self.max_batches is None else min(n, self.max_batches)

    @property
    def rows_to_score(self) -> int:
        return min(self.num_rows, len(self) * self.batch_size)

    def _columns(self) -> List[str]:
        label = [self.meta.label] if self.has_labels else []
        return [*label, *self.meta.dense_features, *self.features]

    def __iter__(self) -> Iterator[ScoringBatch]:
        produced = 0
        pending: List[pa.RecordBatch] = []
        pending_rows = 0
        for path in self.files:
            for batch in self._file_batches(path):
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= self.batch_size:
                    table = pa.Table.from_batches(pending)
                    yield self._convert(table.slice(0, self.batch_size), path)
                    produced += 1
                    if produced == len(self):
                        return
                    rest = table.slice(self.batch_size)
                    pending, pending_rows = rest.to_batches(), rest.num_rows
        if pending_rows and produced < len(self):
            yield self._convert(pa.Table.from_batches(pending), self.files[-1])

    def _file_batches(self, path: Path) -> Iterator[pa.RecordBatch]:
        """A part file's record batches, its page checksums verified: a flipped bit on disk is one
        line naming the file, not a silently different id (or a traceback)."""
        try:
            with pq.ParquetFile(path, page_checksum_verification=True) as pf:
                yield from pf.iter_batches(batch_size=self.batch_size, columns=self._columns())
        except (OSError, pa.ArrowException) as err:
            raise DatasetError(f"cannot read {path}: {err}") from err

    def _convert(self, table: pa.Table, path: Path) -> ScoringBatch:
        for name in table.column_names:
            if table.column(name).null_count:
                raise ValueError(f"{path}: column {name!r} has nulls")
        for name in self.features:
            col = table.column(name)
            try:
                check_column_type(col, name, name in self.meta.multi_hot, str(path))
                check_bags(col, name, self.rows_per_feature[name], self.meta.multi_hot.get(name), str(path))
            except DatasetError as err:
                if "out of range" not in str(err):
                    raise ValueError(str(err)) from None
                raise ValueError(
                    f"{err} (outside the serving table): was this dataset prepared with the training vocabulary?"
                ) from None
        dense = np.stack([table.column(n).to_numpy() for n in self.meta.dense_features], axis=1)
        kjt = build_kjt([table.column(n) for n in self.features], self.features, table.num_rows)
        labels = None
        if self.has_labels:
            labels = torch.from_numpy(table.column(self.meta.label).to_numpy().astype(np.float32))
        return ScoringBatch(torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)), kjt, labels)


class BatchSource(Protocol):
    """What ``score`` reads: a prepared split (``ScoringStream``) or raw lines (``raw_input``)."""

    has_labels: bool

    @property
    def rows_to_score(self) -> Optional[int]:  # None: unknown in advance (raw text)
        ...

    def __iter__(self) -> Iterator[ScoringBatch]: ...


@dataclass
class ScoreResult:
    probs: torch.Tensor
    labels: Optional[torch.Tensor]
    seconds: float

    @property
    def rows(self) -> int:
        return int(self.probs.numel())

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.seconds, 1e-9)

    def metrics(self) -> Dict[str, float]:
        if self.labels is None or self.rows == 0:
            return {"rows": self.rows}
        return Predictions(self.probs, self.labels).metrics()


@torch.no_grad()
def score(
    model: nn.Module,
    stream: BatchSource,
    progress: bool = True,
    desc: str = "scoring",
    device: torch.device = torch.device("cpu"),
) -> ScoreResult:
    """Probabilities of every row (a DLRMTrain-wrapped model: ``model.model(dense, sparse)``)."""
    net = getattr(model, "model", model)
    net.eval()
    probs: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    started = time.perf_counter()
    with tqdm(
        total=stream.rows_to_score,
        unit="rows",
        unit_scale=True,
        desc=desc,
        disable=not progress,
        leave=False,
        smoothing=0.1,
    ) as bar:
        for batch in stream:
            logits = net(dense_features=batch.dense.to(device), sparse_features=batch.sparse.to(device))
            probs.append(torch.sigmoid(logits.float().reshape(-1)).cpu())
            if batch.labels is not None:
                labels.append(batch.labels)
            bar.update(batch.rows)
    seconds = time.perf_counter() - started
    return ScoreResult(
        torch.cat(probs) if probs else torch.empty(0),
        torch.cat(labels) if labels and stream.has_labels else None,
        seconds,
    )


def rows_per_feature(tables: Sequence[dict]) -> Dict[str, int]:
    """feature -> rows of its table, from the manifest's table list."""
    return {f: int(t["num_embeddings"]) for t in tables for f in t["feature_names"]}
