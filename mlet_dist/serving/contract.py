"""The input contract of an exported predict module, written as ``contract.json`` next to it.

A caller holding only torch must be able to build a valid request from this file alone: the dense
columns in order and how the raw values were transformed, the sparse features in the order the
jagged inputs are laid out, each table's size and the id that stands for an unseen value.
"""

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mlet_dist.serving.manifest import ServingDir, sha256_file
from mlet_dist.serving.model import ServingModelConfig

CONTRACT_FORMAT = "mlet-predict-contract"
CONTRACT_VERSION = 1
OOV_ID = 0  # data_prep: id 0 = rare / unseen in train (exact vocabularies; hashed ones have none)

PathLike = Union[str, Path]


def dataset_root(sd: ServingDir, data: Optional[PathLike]) -> Optional[Path]:
    """The training dataset's directory (``data`` or the manifest's data_dir), only if its meta.json
    has the sha256 the serving directory recorded; None when it cannot be found (the contract says so)."""
    from data_prep.dataset_format import META_FILE

    recorded = sd.manifest.get("dataset") or {}
    root = Path(data) if data is not None else (Path(recorded["data_dir"]) if recorded.get("data_dir") else None)
    if root is None or not (root / META_FILE).is_file():
        if data is not None:
            raise ValueError(f"{data} has no {META_FILE}: not a prepared dataset")
        return None
    if recorded.get("meta_sha256") and sha256_file(root / META_FILE) != recorded["meta_sha256"]:
        raise ValueError(
            f"{root / META_FILE} is not the meta.json the model was trained with (sha256 differs from the "
            "serving manifest): its vocabulary and dense transform may not match; pass the training dataset"
        )
    return root


def dataset_meta(sd: ServingDir, data: Optional[PathLike]) -> Optional[Dict[str, Any]]:
    """The checked training dataset's meta.json (``dataset_root``); None when it cannot be found."""
    from data_prep.dataset_format import read_meta

    root = dataset_root(sd, data)
    return None if root is None else read_meta(root)


def build_contract(config: ServingModelConfig, meta: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The JSON contract: inputs (names, dtypes, shapes, layout), features, OOV id, output."""
    hashed = set((meta or {}).get("hashed_features") or {})
    features = [
        {
            "name": f,
            "table": t.name,
            "num_embeddings": t.num_embeddings,
            "pooling": t.pooling,
            "oov_id": None if f in hashed else OOV_ID,
            "hashed": f in hashed,
        }
        for t in config.tables
        for f in t.feature_names
    ]
    dense = list(meta["dense_features"]) if meta else [f"dense_{i}" for i in range(config.dense_in_features)]
    num_sparse = len(features)
    return {
        "format": CONTRACT_FORMAT,
        "format_version": CONTRACT_VERSION,
        "inputs": {
            "float_features": {
                "dtype": "float32",
                "shape": ["B", config.dense_in_features],
                "columns": dense,
                "transform": meta.get("dense_transform") if meta else None,
            },
            "id_list_features.lengths": {
                "dtype": "int32",
                "shape": [f"{num_sparse}*B"],
                "layout": "feature-major: lengths[f*B + b] = number of ids of feature f in row b "
                "(1 per feature and row for one-hot data)",
            },
            "id_list_features.values": {
                "dtype": "int64",
                "shape": ["sum(lengths)"],
                "layout": "ids in the same order: all ids of feature 0 (row 0, row 1, ...), then feature 1, ...",
            },
        },
        "sparse_features": features,
        "oov_id": OOV_ID,
        "id_rule": (meta or {}).get(
            "sparse_transform", "ids from the training vocabulary; id 0 = rare/unseen (exact features)"
        ),
        "output": {"default": "float32 [B]: click probability, sigmoid of the model's logit"},
        "dataset": None if meta is None else {"name": meta.get("dataset"), "label": meta.get("label")},
        "note": None
        if meta is not None
        else "training dataset meta.json not found at export: dense "
        "transform and hashed features unknown (pass --data)",
    }


def request_from_kjt(
    dense: torch.Tensor, sparse: KeyedJaggedTensor, feature_names: List[str]
) -> Dict[str, torch.Tensor]:
    """A batch in the predict module's dict form from TorchRec inputs (features reordered to the contract)."""
    if list(sparse.keys()) != list(feature_names):
        sparse = sparse.permute([sparse.keys().index(f) for f in feature_names])
    return {
        "float_features": dense.float(),
        "id_list_features.lengths": sparse.lengths().int(),
        "id_list_features.values": sparse.values().long(),
    }


def example_request(contract: Dict[str, Any], batch_size: int = 4, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A valid random request (one id per feature and row), for tracing and benchmarks."""
    g = torch.Generator().manual_seed(seed)
    features = contract["sparse_features"]
    dense_width = contract["inputs"]["float_features"]["shape"][1]
    values = torch.cat([torch.randint(0, f["num_embeddings"], (batch_size,), generator=g) for f in features])
    return {
        "float_features": torch.rand(batch_size, dense_width, generator=g),
        "id_list_features.lengths": torch.ones(len(features) * batch_size, dtype=torch.int32),
        "id_list_features.values": values,
    }
