"""Planted benchmark: a prepared dataset whose labels come from a known low-rank model.

Each of T tables (features C1..CT) has Zipf-distributed ids (id 0 most frequent, as in
`synthetic.zipf_ids`) and a ground-truth embedding table E_t (cardinality × R, rows drawn
N(0, σ²·I_R)). A row's observable logit is

    z = b + Σ_{s<t} <E_s[x_s], E_t[x_t]> + w·dense

with D dense features ~ N(0, 1) (I1..ID), and its label is Bernoulli(sigmoid(z + ε)) with
ε ~ N(0, noise²) drawn per row and not observed. The
interaction part is a DLRM dot interaction of rank-R embeddings, so DLRM (and DCN-v2) can
represent it exactly once d >= R; what is hard is learning the embeddings of rare ids.
σ is set so that the interaction part has standard deviation `signal`, w so that the dense part
has `dense_signal`, and b so that the mean click probability is `positive_rate` (all measured on
a pilot sample drawn from separate random streams, so they are deterministic).

The Bayes-optimal predictor knows everything but ε: p(y=1 | x) = E_ε[sigmoid(z + ε)], computed
by Gauss-Hermite quadrature. meta.json records, per split, the AUC of p against the drawn
labels (`bayes_auc`, the ceiling a model's measured AUC on that split should be compared with),
the expected AUC under p itself (`planted.bayes[split].auc_expected`, what an infinite split would
give) and the log loss of p. A model's result can then be read as the fraction of the
attainable AUC gap it closes: (AUC - 0.5) / (bayes_auc - 0.5).

Output: the standard prepared format (data_prep/FORMAT.md): train/val/test parquet parts split
like Criteo Kaggle (7 contiguous chunks), `meta.json` with `dataset: "planted"`, `id_histograms`
(exact train counts) and the keys above. `save_truth` also writes `planted_truth.npz` (E_t, w,
b). Deterministic for a given seed and arguments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from data_prep.dataset_format import SPLITS, PreparedMeta, parquet_schema, write_meta
from data_prep.metrics import binary_auc, expected_auc, log_loss
from data_prep.progress import Progress
from data_prep.spec import PrepConfig, PrepResult
from data_prep.splits import chunk_split_bounds
from data_prep.staging import check_output, publish, staging_dir
from data_prep.vocab_build import count_histogram
from data_prep.writers import SplitWriter, written_splits
from data_prep.generate.synthetic import zipf_ids

PathLike = Union[str, Path]
DATASET_PLANTED = "planted"
TRUTH_FILE = "planted_truth.npz"
BLOCK_ROWS = 1 << 17
PILOT_ROWS = 1 << 16
_HERMITE_NODES = 32
# Independent random streams (numpy SeedSequence spawn keys), so that e.g. the pilot sample
# does not shift the data stream.
_STREAM_TRUTH, _STREAM_PILOT, _STREAM_DATA = 0, 1, 2


@dataclass(frozen=True)
class PlantedSpec:
    rows: int = 2_000_000
    tables: int = 8
    cardinality: Sequence[int] = (200_000,)  # one value for all tables, or one per table
    rank: int = 8
    zipf: float = 1.1
    noise: float = 0.5  # std of the unobserved logit noise ε
    seed: int = 0
    dense: int = 13
    signal: float = 2.0  # std of the pairwise-interaction part of the logit
    dense_signal: float = 0.5  # std of the dense part of the logit
    positive_rate: float = 0.25  # target mean click probability

    def __post_init__(self) -> None:
        if self.rows < 0:
            raise ValueError(f"--rows must be >= 0, got {self.rows}")
        if self.tables < 2:
            raise ValueError(f"--tables must be >= 2 (labels come from pairwise interactions), got {self.tables}")
        sizes = list(self.cardinality)
        if len(sizes) not in (1, self.tables) or min(sizes) < 1:
            raise ValueError(f"--cardinality needs 1 or {self.tables} values >= 1, got {sizes}")
        if self.rank < 1:
            raise ValueError(f"--rank must be >= 1, got {self.rank}")
        if self.zipf <= 0:
            raise ValueError(f"--zipf must be > 0, got {self.zipf}")
        if self.noise < 0 or self.signal <= 0 or self.dense_signal < 0:
            raise ValueError("--noise and --dense-signal must be >= 0 and --signal > 0")
        if self.dense < 0:
            raise ValueError(f"--dense must be >= 0, got {self.dense}")
        if not 0.0 < self.positive_rate < 1.0:
            raise ValueError(f"--positive-rate must be in (0, 1), got {self.positive_rate}")

    @property
    def table_sizes(self) -> List[int]:
        sizes = [int(c) for c in self.cardinality]
        return sizes * self.tables if len(sizes) == 1 else sizes

    @property
    def sparse_features(self) -> List[str]:
        return [f"C{i}" for i in range(1, self.tables + 1)]

    @property
    def dense_features(self) -> List[str]:
        return [f"I{i}" for i in range(1, self.dense + 1)]


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class _Truth:
    """Ground truth: embeddings, dense weights, bias; noise-marginalised probabilities."""

    def __init__(self, spec: PlantedSpec) -> None:
        self.spec = spec
        seeds = np.random.SeedSequence(spec.seed).spawn(3)
        self._seeds = seeds
        rng = np.random.default_rng(seeds[_STREAM_TRUTH])
        self.embeddings = [rng.standard_normal((n, spec.rank)) for n in spec.table_sizes]
        w = rng.standard_normal(spec.dense)
        self.dense_weights = w / max(float(np.linalg.norm(w)), 1e-12) * spec.dense_signal if spec.dense else w
        nodes, weights = np.polynomial.hermite_e.hermegauss(_HERMITE_NODES)  # ∫ f(x) N(x; 0, 1) dx
        self._nodes, self._weights = nodes, weights / weights.sum()
        self.bias = 0.0
        # Calibrate on a pilot sample: embedding scale for `signal`, then the bias for `positive_rate`.
        pilot = np.random.default_rng(seeds[_STREAM_PILOT])
        ids = self._draw_ids(pilot, PILOT_ROWS)
        raw_std = float(np.std(self._interaction(ids)))
        scale = math.sqrt(spec.signal / raw_std) if raw_std > 0 else 1.0
        self.embeddings = [e * scale for e in self.embeddings]
        self.embedding_std = scale  # per coordinate
        z0 = self._interaction(ids) + pilot.standard_normal((PILOT_ROWS, spec.dense)) @ self.dense_weights
        lo, hi = -30.0, 30.0
        for _ in range(60):  # bisection: mean p is increasing in b
            mid = 0.5 * (lo + hi)
            if self.probability(z0 + mid).mean() < spec.positive_rate:
                lo = mid
            else:
                hi = mid
        self.bias = 0.5 * (lo + hi)

    def data_rng(self) -> np.random.Generator:
        return np.random.default_rng(self._seeds[_STREAM_DATA])

    def _draw_ids(self, rng: np.random.Generator, n: int) -> List[np.ndarray]:
        return [zipf_ids(rng, n, size, self.spec.zipf) for size in self.spec.table_sizes]

    def _interaction(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        """Σ_{s<t} <e_s, e_t> = (|Σ e|² - Σ |e|²) / 2."""
        total = np.zeros((len(ids[0]), self.spec.rank))
        squares = np.zeros(len(ids[0]))
        for table, col in zip(self.embeddings, ids):
            e = table[col]
            total += e
            squares += np.einsum("ij,ij->i", e, e)
        return 0.5 * (np.einsum("ij,ij->i", total, total) - squares)

    def probability(self, z: np.ndarray) -> np.ndarray:
        """E_ε sigmoid(z + ε), ε ~ N(0, noise²): the Bayes-optimal click probability."""
        if self.spec.noise == 0:
            return _sigmoid(z)
        out = np.zeros_like(z)
        for x, w in zip(self._nodes, self._weights):
            out += w * _sigmoid(z + self.spec.noise * x)
        return out

    def block(self, rng: np.random.Generator, n: int) -> tuple:
        """(ids per table, dense [n, D] float32, observable logit z [n], labels int8 [n])."""
        ids = self._draw_ids(rng, n)
        dense = rng.standard_normal((n, self.spec.dense)).astype(np.float32)
        z = self.bias + self._interaction(ids) + dense.astype(np.float64) @ self.dense_weights
        eps = self.spec.noise * rng.standard_normal(n)
        labels = (rng.random(n) < _sigmoid(z + eps)).astype(np.int8)
        return ids, dense, z, labels


# ----------------------------------------------------------------------------
# The writer
# ----------------------------------------------------------------------------


def generate_planted(
    out: PathLike,
    spec: PlantedSpec,
    config: Optional[PrepConfig] = None,
    save_truth: bool = False,
    **overrides: Any,
) -> PrepResult:
    """Write a planted dataset (see the module docstring) to `out`."""
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    out_path = Path(out)
    check_output(out_path, cfg.overwrite)
    truth = _Truth(spec)
    rng = truth.data_rng()
    sizes = spec.table_sizes
    features = spec.sparse_features
    schema = parquet_schema(spec.dense_features, features)
    bounds = chunk_split_bounds(spec.rows)
    counts = [np.zeros(n, np.int64) for n in sizes]
    z_parts: Dict[str, List[np.ndarray]] = {s: [] for s in SPLITS}
    y_parts: Dict[str, List[np.ndarray]] = {s: [] for s in SPLITS}
    with staging_dir(out_path) as tmp:
        writers = {s: SplitWriter(tmp, s, schema, cfg) for s in SPLITS}
        progress = Progress(cfg.progress, spec.rows, "planted", unit="rows")
        pos = 0
        while pos < spec.rows:
            n = min(BLOCK_ROWS, spec.rows - pos)
            ids, dense, z, labels = truth.block(rng, n)
            cols = [pa.array(labels, pa.int8())]
            cols += [pa.array(dense[:, j]) for j in range(spec.dense)]
            cols += [pa.array(col, pa.int64()) for col in ids]
            table = pa.Table.from_arrays(cols, schema=schema)
            for split in SPLITS:
                lo, hi = (min(max(b - pos, 0), n) for b in bounds[split])
                if hi > lo:
                    writers[split].write(table.slice(lo, hi - lo))
                    z_parts[split].append(z[lo:hi].astype(np.float32))
                    y_parts[split].append(labels[lo:hi])
                    if split == "train":
                        for c, col in zip(counts, ids):
                            c += np.bincount(col[lo:hi], minlength=len(c))
            pos += n
            progress.update(n, n)
        progress.close()
        for w in writers.values():
            w.close()

        bayes: Dict[str, Dict[str, float]] = {}
        rates: Dict[str, float] = {}
        for split in SPLITS:
            z = np.concatenate(z_parts[split]) if z_parts[split] else np.zeros(0, np.float32)
            y = np.concatenate(y_parts[split]) if y_parts[split] else np.zeros(0, np.int8)
            p = truth.probability(z.astype(np.float64))
            bayes[split] = {
                "auc": binary_auc(p, y),
                "auc_expected": expected_auc(p, p),
                "logloss": log_loss(p, y),
                "rows": int(len(y)),
            }
            rates[split] = float(y.mean()) if len(y) else float("nan")
        histograms = {
            f: {**count_histogram(c), "distinct_train_values": int((c > 0).sum()), "hashed": False}
            for f, c in zip(features, counts)
        }
        meta = PreparedMeta(
            dataset=DATASET_PLANTED,
            source="planted",
            sources=[],
            dense_features=spec.dense_features,
            sparse_features=features,
            table_sizes=dict(zip(features, sizes)),
            splits=written_splits(writers),
            split={"method": "dlrm-7-chunks", "chunks": 7},
            rows_read=spec.rows,
            id_histograms=histograms,
            dense_transform="none: N(0, 1) draws",
            sparse_transform="none: Zipf ids drawn directly (id 0 most frequent, no reserved rare id)",
            extra={
                "bayes_auc": {s: bayes[s]["auc"] for s in SPLITS},
                "planted": {
                    "rows": spec.rows,
                    "tables": spec.tables,
                    "cardinality": sizes,
                    "rank": spec.rank,
                    "zipf_exponent": spec.zipf,
                    "noise": spec.noise,
                    "seed": spec.seed,
                    "dense": spec.dense,
                    "signal": spec.signal,
                    "dense_signal": spec.dense_signal,
                    "positive_rate_target": spec.positive_rate,
                    "positive_rate": rates,
                    "bias": truth.bias,
                    "embedding_std": truth.embedding_std,
                    "bayes": bayes,
                    "model": "z = b + sum_{s<t} <E_s[x_s], E_t[x_t]> + w.dense + eps; y ~ Bernoulli(sigmoid(z)); "
                    "eps ~ N(0, noise^2) unobserved; Bayes p = E_eps sigmoid(z + eps)",
                },
            },
        ).to_dict()
        if save_truth:
            arrays: Dict[str, Any] = {  # numpy's stub would let a ** key fill savez's allow_pickle
                "bias": truth.bias,
                "dense_weights": truth.dense_weights,
                **{f"E_{f}": e.astype(np.float32) for f, e in zip(features, truth.embeddings)},
            }
            np.savez_compressed(tmp / TRUTH_FILE, **arrays)
        write_meta(tmp, meta)
        publish(tmp, out_path, cfg.overwrite)
    return PrepResult(out_dir=out_path, meta=meta)


def attainable_gap_closed(auc: float, bayes_auc: float) -> float:
    """(AUC - 0.5) / (Bayes AUC - 0.5): the fraction of the attainable AUC gap a model closes."""
    if not bayes_auc > 0.5:
        return float("nan")
    return (auc - 0.5) / (bayes_auc - 0.5)
