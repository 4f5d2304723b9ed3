"""Multi-hot bags for generated data, and the ``--pooling`` flag.

A bag is a list<int64> cell (FORMAT.md, version 2): zero or more ids of one feature in one row.
Generators draw bag sizes uniformly in [0, max_bag] (so empty bags occur) and the ids from the
same power law as single-hot ids, so the id statistics stay comparable.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import pyarrow as pa

from data_prep.dataset_format import POOLINGS


def draw_bags(
    rng: np.random.Generator,
    rows: int,
    max_bag: int,
    draw_ids: Callable[[int], np.ndarray],
) -> Tuple[pa.Array, np.ndarray, np.ndarray]:
    """(list<int64> column, flat ids, offsets [rows + 1]) with bag sizes uniform in [0, max_bag]."""
    if max_bag < 1:
        raise ValueError(f"max bag size must be >= 1, got {max_bag}")
    lengths = rng.integers(0, max_bag + 1, rows)
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.asarray(draw_ids(int(offsets[-1])), dtype=np.int64)
    column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids, pa.int64()))
    return column, ids, offsets


def parse_pooling(text: str, features: Sequence[str]) -> Dict[str, str]:
    """``sum`` / ``mean`` for every feature, or ``F=mean,G=sum`` (unnamed features: sum)."""
    text = text.strip()
    if text in POOLINGS:
        return {f: text for f in features}
    out: Dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, how = item.partition("=")
        if not sep or how not in POOLINGS:
            raise ValueError(f"--pooling takes sum, mean or FEATURE=sum|mean,...; got {item!r}")
        if name not in features:
            raise ValueError(f"--pooling names {name!r}, which is not a sparse feature ({features[0]}..{features[-1]})")
        out[name] = how
    return out
