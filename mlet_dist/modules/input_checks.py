"""Checks on a KeyedJaggedTensor before it reaches an embedding kernel.

fbgemm's CPU kernels do not bound-check ids: an id >= n reads or writes outside the table.
These checks turn such input into a ValueError that names the feature.
"""

from typing import Dict, Iterable

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def check_feature_names(features: KeyedJaggedTensor, expected: Iterable[str]) -> None:
    expected_set = set(expected)
    got = set(features.keys())
    unknown = sorted(got - expected_set)
    missing = sorted(expected_set - got)
    if unknown or missing:
        raise ValueError(
            f"KeyedJaggedTensor features do not match the embedding tables: unknown {unknown}, "
            f"missing {missing}; expected exactly {sorted(expected_set)}"
        )


def check_id_ranges(features: KeyedJaggedTensor, rows_per_feature: Dict[str, int]) -> None:
    values = features.values()
    if values.numel() == 0:
        return
    lengths = features.length_per_key()
    for key, ids in zip(features.keys(), values.split(lengths)):
        if ids.numel() == 0:
            continue
        lo, hi = int(ids.min()), int(ids.max())
        n = rows_per_feature[key]
        if lo < 0 or hi >= n:
            raise ValueError(
                f"feature {key!r}: ids must lie in [0, {n}) but range over [{lo}, {hi}]; "
                "map out-of-vocabulary ids before the model (data_prep reserves id 0 for them)"
            )


def check_weights(features: KeyedJaggedTensor, is_weighted: bool) -> None:
    weights = features.weights_or_none()
    if is_weighted and weights is None:
        raise ValueError("collection is weighted (is_weighted=True) but the KJT carries no weights")
    if not is_weighted and weights is not None:
        raise ValueError("KJT carries per-sample weights but the collection has is_weighted=False")
    if weights is not None and not torch.is_floating_point(weights):
        raise ValueError(f"per-sample weights must be floating point, got {weights.dtype}")
