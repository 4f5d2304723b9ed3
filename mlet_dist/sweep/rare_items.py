"""AUC by item frequency: how well a model ranks test examples whose ids were rare in training.

For every sparse feature the train split's id counts are tallied (``train_id_counts``; cached
as an .npz next to the runs). A test example's frequency is an aggregate over the chosen features
of the train counts of its ids (``min``: the rarest id in the example, the default; ``max``;
``mean_log``: the geometric mean of count + 1, minus 1). Examples are bucketed by it at fixed
edges and the AUC of a run's saved test predictions (``predictions/test.npz``: row, prob, label)
is computed within each bucket. The data and the buckets are the same for every run, so the
buckets of a baseline and an MLET run at the same d compare directly.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq

from data_prep.dataset_format import meta_file, read_meta
from data_prep.metrics import binary_auc
from mlet_dist.digests import sha256_file


def _data_fingerprint(data_dir: Path) -> str:
    """Which dataset a cached count file belongs to: the sha256 of its meta.json."""
    return sha256_file(meta_file(data_dir))[:16]


def train_id_counts(
    data_dir: Path, features: Optional[Sequence[str]] = None, cache: Optional[Path] = None
) -> Dict[str, np.ndarray]:
    """feature -> int64 array of length table_size: how many train rows carry each id."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    features = list(features or meta["sparse_features"])
    missing = [f for f in features if f not in meta["sparse_features"]]
    if missing:
        raise ValueError(f"rare_items.features {missing} are not sparse features of {data_dir}")
    key = _data_fingerprint(data_dir)
    if cache is not None and Path(cache).is_file():
        with np.load(cache) as f:
            if str(f["fingerprint"]) == key and all(f"count_{c}" in f for c in features):
                return {c: f[f"count_{c}"] for c in features}
    counts = {c: np.zeros(int(meta["table_sizes"][c]), np.int64) for c in features}
    for rel in meta["splits"]["train"]["files"]:
        pf = pq.ParquetFile(data_dir / rel, page_checksum_verification=True)
        for batch in pf.iter_batches(columns=features, batch_size=1 << 18):
            for c in features:
                counts[c] += np.bincount(batch.column(c).to_numpy(), minlength=len(counts[c]))
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(cache).with_name(f".{Path(cache).name}.tmp.npz")
        arrays: Dict[str, Any] = {"fingerprint": key, **{f"count_{c}": v for c, v in counts.items()}}
        np.savez(tmp, **arrays)
        tmp.replace(cache)
    return counts


def example_frequency(
    data_dir: Path, split: str, counts: Dict[str, np.ndarray], rows: int, aggregate: str = "min"
) -> np.ndarray:
    """Aggregate train frequency of the first ``rows`` examples of ``split`` (file order)."""
    meta = read_meta(data_dir)
    features = list(counts)
    parts: List[np.ndarray] = []
    seen = 0
    for rel in meta["splits"][split]["files"]:
        if seen >= rows:
            break
        pf = pq.ParquetFile(Path(data_dir) / rel, page_checksum_verification=True)
        for batch in pf.iter_batches(columns=features, batch_size=1 << 18):
            take = min(batch.num_rows, rows - seen)
            per_feature = np.stack([counts[c][batch.column(c).to_numpy()[:take]] for c in features], axis=1)
            if aggregate == "min":
                parts.append(per_feature.min(axis=1).astype(np.float64))
            elif aggregate == "max":
                parts.append(per_feature.max(axis=1).astype(np.float64))
            elif aggregate == "mean_log":
                parts.append(np.expm1(np.log1p(per_feature).mean(axis=1)))
            else:
                raise ValueError(f"unknown aggregate {aggregate!r}")
            seen += take
            if seen >= rows:
                break
    if seen < rows:
        raise ValueError(f"{split} has {seen} rows, predictions cover {rows}")
    return np.concatenate(parts) if parts else np.zeros(0)


def bucket_labels(edges: Sequence[int]) -> List[str]:
    """Human-readable names of the len(edges) + 1 buckets of integer train counts."""
    names = [f"0–{edges[0] - 1}" if edges[0] > 1 else "0 (unseen)"]
    for lo, hi in zip(edges[:-1], edges[1:]):
        names.append(f"{lo}" if hi - lo == 1 else f"{lo}–{hi - 1}")
    names.append(f"≥{edges[-1]}")
    return names


@dataclass
class Bucket:
    index: int
    name: str
    rows: int
    positives: int
    auc: float  # nan when too few rows or one class only


def bucket_aucs(
    frequency: np.ndarray, probs: np.ndarray, labels: np.ndarray, edges: Sequence[int], min_rows: int = 100
) -> List[Bucket]:
    """AUC of ``probs`` within each frequency bucket (all buckets, empty ones with rows = 0)."""
    if not len(frequency) == len(probs) == len(labels):
        raise ValueError("frequency, probs and labels differ in length")
    which = np.searchsorted(np.asarray(edges, np.float64), frequency, side="right")
    out = []
    for i, name in enumerate(bucket_labels(edges)):
        mask = which == i
        n = int(mask.sum())
        pos = int(labels[mask].sum())
        auc = binary_auc(probs[mask], labels[mask]) if n >= max(min_rows, 2) else float("nan")
        out.append(Bucket(i, name, n, pos, auc))
    return out


class RareItemScorer:
    """Frequencies computed once per dataset, then any number of runs bucketed against them."""

    def __init__(
        self,
        data_dir: Path,
        features: Optional[Sequence[str]],
        aggregate: str,
        edges: Sequence[int],
        min_rows: int,
        cache: Optional[Path] = None,
        split: str = "test",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.counts = train_id_counts(self.data_dir, features, cache)
        self.aggregate, self.edges, self.min_rows, self.split = aggregate, list(edges), min_rows, split
        self._freq: Optional[np.ndarray] = None

    def frequency(self, rows: int) -> np.ndarray:
        if self._freq is None or len(self._freq) < rows:
            self._freq = example_frequency(self.data_dir, self.split, self.counts, rows, self.aggregate)
        return self._freq[:rows]

    def score(self, predictions: Dict[str, np.ndarray]) -> List[Bucket]:
        rows = predictions["row"]
        if len(rows) and (rows.min() < 0 or not np.array_equal(rows, np.arange(len(rows)))):
            freq = self.frequency(int(rows.max()) + 1)[rows]
        else:
            freq = self.frequency(len(rows))
        return bucket_aucs(
            freq,
            predictions["prob"].astype(np.float64),
            predictions["label"].astype(np.int64),
            self.edges,
            self.min_rows,
        )

    def describe(self) -> Dict[str, object]:
        return {
            "features": list(self.counts),
            "aggregate": self.aggregate,
            "edges": self.edges,
            "min_rows": self.min_rows,
            "split": self.split,
        }
