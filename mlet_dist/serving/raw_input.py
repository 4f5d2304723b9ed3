"""Raw Criteo (TSV) / Avazu (CSV) rows -> scoring batches, through the training dataset's vocabulary.

A serving request arrives as the raw log line, not as prepared parquet. To get the ids and dense
values the model was trained with, the lines go through the *preparation's own* parser
(``data_prep.spec.parse_block``: the same field validation and the same dense transform) and
the vocabulary the preparation saved (``data_prep.vocabulary``), never a re-implementation of
either. Accounting follows the preparation: a malformed line is reported with its line number
and skipped, the other lines are scored; a valid value the vocabulary does not hold gets the
out-of-vocabulary id and is counted per feature. Rows may carry the label (the training layout)
or omit it (a request): decided per file, from the header (Avazu) or the field counts (Criteo).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import torch

from data_prep import textio
from data_prep.avazu import AVAZU_SPEC
from data_prep.criteo import criteo_spec
from data_prep.dataset_format import DATASET_AVAZU, DATASET_CRITEO_KAGGLE, DATASET_CRITEO_TERABYTE
from data_prep.spec import DatasetSpec, Reject, parse_block
from data_prep.vocabulary import OOV_ID, Vocabulary
from mlet_dist.data.bags import build_kjt
from mlet_dist.serving.scoring import ScoringBatch

MAX_LISTED_REJECTS = 1000  # rejects kept line by line in the report; the count is always exact


def raw_spec(dataset: Optional[str]) -> DatasetSpec:
    """The preparation's description of a dataset's raw lines (columns, kinds, separator, header)."""
    if dataset in (DATASET_CRITEO_KAGGLE, DATASET_CRITEO_TERABYTE):
        return criteo_spec(dataset)
    if dataset == DATASET_AVAZU:
        return AVAZU_SPEC
    raise ValueError(
        f"--raw scores raw {DATASET_CRITEO_KAGGLE}, {DATASET_CRITEO_TERABYTE} or {DATASET_AVAZU} rows; the model "
        f"was trained on a {dataset!r} dataset, which has no raw text format"
    )


def without_label(spec: DatasetSpec) -> DatasetSpec:
    """The same spec for request rows that omit the label column (and its header name)."""
    at = [i for i, c in enumerate(spec.columns) if c.kind == "label"]
    columns = tuple(c for i, c in enumerate(spec.columns) if i not in at)
    header = spec.header
    if header is not None:
        header = spec.sep.join(h for i, h in enumerate(header.split(spec.sep)) if i not in at)
    return replace(spec, columns=columns, header=header)


@dataclass
class RawReport:
    """What happened to every data line of the raw file (scored + rejected = lines read)."""

    file: str
    labeled: bool
    rows_scored: int = 0
    rows_rejected: int = 0
    rejects: List[Dict[str, Any]] = field(default_factory=list)  # the first MAX_LISTED_REJECTS
    unknown: Dict[str, int] = field(default_factory=dict)  # feature -> values given the OOV id

    @property
    def rows_read(self) -> int:
        return self.rows_scored + self.rows_rejected

    def add_rejects(self, rejects: Sequence[Reject]) -> None:
        self.rows_rejected += len(rejects)
        room = MAX_LISTED_REJECTS - len(self.rejects)
        self.rejects.extend({"line": r.line, "reason": r.reason} for r in rejects[: max(room, 0)])

    def as_dict(self) -> Dict[str, Any]:
        return {
            "file": self.file,
            "labeled": self.labeled,
            "rows_read": self.rows_read,
            "rows_scored": self.rows_scored,
            "rows_rejected": self.rows_rejected,
            "rejects": self.rejects,
            "rejects_listed": len(self.rejects),
            "oov_id": OOV_ID,
            "unknown_values": dict(self.unknown),
            "unknown_total": sum(self.unknown.values()),
        }


class RawScoringStream:
    """Batches of one raw file, duck-typed like ``ScoringStream`` for ``scoring.score``.

    ``lines`` (after an iteration) holds the 1-based input line of every scored row, in order, so
    predictions can be joined back to the request lines around the rejected ones."""

    def __init__(
        self,
        path: Path,
        meta: Dict[str, Any],
        vocab: Vocabulary,
        rows_per_feature: Dict[str, int],
        batch_size: int,
        block_bytes: int = textio.DEFAULT_BLOCK_BYTES,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"raw input file not found: {self.path}")
        labeled_spec = raw_spec(meta.get("dataset"))
        self.dense_features = list(meta["dense_features"])
        missing = sorted(set(rows_per_feature) - set(meta["sparse_features"]))
        if missing:
            raise ValueError(f"the training dataset lacks the model's sparse features {missing}")
        self.features = [f for f in meta["sparse_features"] if f in rows_per_feature]
        absent = [f for f in self.features if f not in vocab.features]
        if absent:
            raise ValueError(f"{vocab.source} has no vocabulary for the model's features {absent}")
        if list(labeled_spec.dense_features) != self.dense_features:
            raise ValueError(
                f"the training dataset's dense features {self.dense_features} are not the ones "
                f"{labeled_spec.name} lines produce {list(labeled_spec.dense_features)}"
            )
        self.vocab, self.batch_size, self.block_bytes = vocab, batch_size, block_bytes
        self.labeled = self._detect_label(labeled_spec)
        self.spec = labeled_spec if self.labeled else without_label(labeled_spec)
        self.has_labels = self.labeled
        self.rows_to_score: Optional[int] = None  # unknown before parsing (a progress bar without total)
        self.report = RawReport(str(self.path), self.labeled)
        self.lines = np.zeros(0, np.int64)

    def _detect_label(self, spec: DatasetSpec) -> bool:
        """Labeled (training layout) or request rows: the header says (Avazu); else the field
        count most lines of the first block have (Criteo: 40 with the label, 39 without)."""
        block = next(textio.iter_line_blocks(self.path, self.block_bytes), None)
        if block is None or not block.num_lines:
            return True
        if spec.header is not None:
            first = block.line(0)
            if first == spec.header:
                return True
            if first == without_label(spec).header:
                return False
            raise ValueError(
                f"{self.path}:1: expected the header line {spec.header.decode()!r} (or without "
                f"the label column), got {first[:200]!r}"
            )
        columns, *_ = textio.split_fields(block, spec.sep[0], len(spec.columns))
        return int((columns == len(spec.columns)).sum()) >= int((columns == len(spec.columns) - 1).sum())

    def _blocks(self) -> Iterator[Tuple[textio.LineBlock, List[Reject]]]:
        for block in textio.iter_line_blocks(self.path, self.block_bytes):
            extra: List[Reject] = []
            if block.truncated is not None:  # a damaged gzip: the incomplete last line is a reject
                reason, tail = block.truncated
                extra.append(Reject(block.first_line + block.num_lines, reason, tail, self.path.name))
            if self.spec.header is not None and block.first_line == 1 and block.num_lines:
                block = block.drop_first_line()  # checked in _detect_label
            yield block, extra

    def __iter__(self) -> Iterator[ScoringBatch]:
        self.report = RawReport(str(self.path), self.labeled)
        self.report.unknown = {f: 0 for f in self.features}
        lines_out: List[np.ndarray] = []
        pending: List[Dict[str, np.ndarray]] = []
        pending_rows = 0
        for block, extra in self._blocks():
            parsed = parse_block(self.spec, block, self.path.name)
            self.report.add_rejects([*parsed.rejects, *extra])
            if not len(parsed.lines):
                continue
            pending.append(self._encode(parsed))
            pending_rows += len(parsed.lines)
            while pending_rows >= self.batch_size:
                rows = _concat(pending)
                head = {k: v[..., : self.batch_size] for k, v in rows.items()}
                rest = {k: v[..., self.batch_size :] for k, v in rows.items()}
                pending, pending_rows = [rest], pending_rows - self.batch_size
                lines_out.append(head["line"])
                self.lines = np.concatenate(lines_out)
                yield self._batch(head)
        if pending_rows:
            rows = _concat(pending)
            lines_out.append(rows["line"])
            self.lines = np.concatenate(lines_out)
            yield self._batch(rows)
        self.lines = np.concatenate(lines_out) if lines_out else np.zeros(0, np.int64)

    def _encode(self, parsed: Any) -> Dict[str, np.ndarray]:
        """Typed rows of one block: line numbers, label, dense [D, n], ids [F, n] (vocabulary)."""
        n = len(parsed.lines)
        valid = np.ones(n, bool)  # parse_block kept only lines whose every value parsed
        ids = np.empty((len(self.features), n), np.int64)
        for i, name in enumerate(self.features):
            encoded = self.vocab.features[name].encode_keys(valid, parsed.keys[name])
            ids[i] = encoded.ids
            self.report.unknown[name] += encoded.unknown
        dense = np.stack([parsed.dense[name] for name in self.dense_features]).astype(np.float32)
        self.report.rows_scored += n
        return {"line": np.asarray(parsed.lines, np.int64), "label": parsed.label, "dense": dense, "ids": ids}

    def _batch(self, rows: Dict[str, np.ndarray]) -> ScoringBatch:
        n = rows["line"].shape[0]
        kjt = build_kjt([pa.array(rows["ids"][i]) for i in range(len(self.features))], self.features, n)
        labels = torch.from_numpy(rows["label"].astype(np.float32)) if self.labeled else None
        return ScoringBatch(torch.from_numpy(np.ascontiguousarray(rows["dense"].T)), kjt, labels)


def _concat(parts: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}
