"""Criteo Kaggle (train.txt) and Criteo Terabyte (day_0 .. day_23) preparation.

Both are the same TSV (label, I1..I13, C1..C26) and share the same transforms;
they differ in the split: Kaggle cuts the accepted rows of its one file into the
reference DLRM's 7 chunks, Terabyte uses days (files). See FORMAT.md.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from data_prep.dataset_format import (
    CRITEO_DENSE_FEATURES,
    CRITEO_SPARSE_FEATURES,
    DATASET_CRITEO_KAGGLE,
    DATASET_CRITEO_TERABYTE,
    LABEL,
)
from data_prep.parallel.driver import run_prep
from data_prep.spec import DatasetSpec, PathLike, PrepConfig, PrepResult, RawColumn
from data_prep.splits import ChunkSplit, DaySplit

CRITEO_COLUMNS = (
    (RawColumn(LABEL, "label"),)
    + tuple(RawColumn(n, "dense_log") for n in CRITEO_DENSE_FEATURES)
    + tuple(RawColumn(n, "hex8") for n in CRITEO_SPARSE_FEATURES)
)
CRITEO_TRANSFORMS = {
    "dense_transform": "log(max(x, 0) + 1), empty -> 0, float64 -> float32",
    "sparse_transform": "train-split vocabulary: id 0 = rare/unseen, ids 1.. by descending train count",
}


def criteo_spec(dataset: str) -> DatasetSpec:
    return DatasetSpec(name=dataset, columns=CRITEO_COLUMNS, sep=b"\t", sep_name="tab-separated")


def prepare_criteo_kaggle(
    src: PathLike, out: PathLike, config: Optional[PrepConfig] = None, **overrides: Any
) -> PrepResult:
    """Convert a Criteo Kaggle TSV (plain or gzip) into a prepared dataset at `out`.

    `overrides` are PrepConfig fields (e.g. min_count=3, strict=True). Streaming:
    memory is bounded by the block size and the vocabularies, not by the file.
    """
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    return run_prep(criteo_spec(DATASET_CRITEO_KAGGLE), [src], out, cfg, ChunkSplit(), dict(CRITEO_TRANSFORMS))


_DAY_RE = re.compile(r"^day_(\d+)(\.gz)?$")


def terabyte_day_files(inputs: Sequence[PathLike]) -> List[Path]:
    """Expand inputs (files, or directories holding day_N / day_N.gz) into day files.
    Files from a directory are ordered by day number; given files keep their order."""
    files: List[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.is_dir():
            files.append(p)
            continue
        found: Dict[int, Path] = {}
        for child in p.iterdir():
            m = _DAY_RE.match(child.name)
            if m and child.is_file():
                day = int(m.group(1))
                if day in found:
                    raise ValueError(f"{p}: day {day} exists twice ({found[day].name}, {child.name})")
                found[day] = child
        if not found:
            raise FileNotFoundError(f"no day_N or day_N.gz files in {p}")
        files.extend(found[d] for d in sorted(found))
    return files


def prepare_criteo_terabyte(
    sources: Sequence[PathLike], out: PathLike, config: Optional[PrepConfig] = None, **overrides: Any
) -> PrepResult:
    """Criteo Terabyte day files -> prepared dataset. All files but the last are
    train; the last file is halved into val (first half, rounded up) and test.
    Vocabulary counts use `count_memory_mb`; beyond it the largest features are
    hashed (meta.json `hashed_features`)."""
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    files = terabyte_day_files(sources)
    if len(files) < 2:
        raise ValueError(f"criteo-terabyte needs at least 2 day files (train days + a val/test day), got {len(files)}")
    return run_prep(
        criteo_spec(DATASET_CRITEO_TERABYTE), files, out, cfg, DaySplit(len(files)), dict(CRITEO_TRANSFORMS)
    )
