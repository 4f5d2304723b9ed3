"""meta.json of a raw-data preparation (parallel/driver.py's run), through dataset_format.PreparedMeta."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from data_prep.dataset_format import REJECTS_FILE, SPLITS, PreparedMeta, source_label
from data_prep.spec import DatasetSpec, PrepConfig
from data_prep.splits import SplitPolicy
from data_prep.vocab_build import FeatureVocab
from data_prep.vocabulary import vocabulary_meta
from data_prep.writers import RejectSink


def build_meta(
    spec: DatasetSpec,
    names: Sequence[str],
    cfg: PrepConfig,
    policy: SplitPolicy,
    vocabs: Dict[str, FeatureVocab],
    histograms: Dict[str, Dict[str, Any]],
    hashed: Dict[str, str],
    zero_rows: Dict[str, List[int]],
    splits_meta: Dict[str, Any],
    acc: int,
    sink: RejectSink,
    rows_per_file: Sequence[int],
    vocab_entries: Dict[str, Dict[str, Any]],
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """meta.json of a raw-data preparation; `extra` is what the dataset's module adds (its transforms)."""
    refuse_empty(spec, names, acc, sink)
    sparse = spec.sparse_features
    for name in sparse:
        histograms[name]["id0_rows"] = dict(zip(SPLITS, zero_rows[name]))
        histograms[name]["hashed"] = vocabs[name].hashed
    return PreparedMeta(
        dataset=spec.name,
        source=source_label(names),
        sources=list(names),
        label=spec.label,
        dense_features=spec.dense_features,
        sparse_features=sparse,
        table_sizes={name: int(vocabs[name].size) for name in sparse},
        min_count=cfg.min_count,
        hash_size=cfg.hash_size,
        count_memory_mb=cfg.count_memory_mb,
        hashed_features=hashed,
        splits=splits_meta,
        split=policy.describe(),
        rows_read=acc + sink.count,
        rows_rejected=sink.count,
        rows_rejected_by_kind=sink.by_reason,
        rows_per_source=dict(zip(names, rows_per_file)),
        rejects_file=REJECTS_FILE if sink.count else None,
        id_histograms=histograms,
        vocabulary=vocabulary_meta(vocab_entries),
        extra=dict(extra or {}),
    ).to_dict()


def refuse_empty(spec: DatasetSpec, names: Sequence[str], acc: int, sink: RejectSink) -> None:
    """Every row rejected means the wrong input (another dataset's file), not a dataset: refuse it
    before publishing, instead of letting training fail later on an empty train split. (An empty
    input, nothing read and nothing rejected, stays an empty dataset, as before.)"""
    if acc or not sink.count:
        return
    source = names[0] if len(names) == 1 else f"{len(names)} files"
    kinds = ", ".join(f"{kind}: {n:,}" for kind, n in sorted(sink.by_reason.items()))
    raise ValueError(
        f"kept 0 of the {sink.count:,} rows of {source} as {spec.name} rows ({kinds}; first: "
        f"{sink.first}): is it another dataset's file (mlet-prep --help lists the formats)? "
        "nothing was published"
    )
