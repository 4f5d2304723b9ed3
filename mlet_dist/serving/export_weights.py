"""The collapsed model as one safetensors file: every weight of the stock d-wide model, consolidated,
with the model config in the file's own metadata. safetensors holds raw tensors and a JSON header,
so reading it never unpickles anything (the DCP checkpoint needs an allow-listed reader for that).
"""

import json
from pathlib import Path
from typing import Dict, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from data_prep.safe_json import parse_json_text
from mlet_dist.serving.model import ServingModelConfig, build_serving_model

WEIGHTS_FORMAT = "mlet-serving-weights"
PathLike = Union[str, Path]


def save_weights(model: nn.Module, config: ServingModelConfig, path: PathLike) -> None:
    """All tensors of ``model`` (an unsharded serving model) under their state-dict keys."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": WEIGHTS_FORMAT, "model_config": json.dumps(config.to_dict(), sort_keys=True)}
    save_file(state, str(path), metadata=metadata)


def read_weights(path: PathLike) -> "tuple[Dict[str, torch.Tensor], ServingModelConfig]":
    """(state dict, model config) from a file written by ``save_weights``."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != WEIGHTS_FORMAT or "model_config" not in metadata:
            raise ValueError(f"{path} is not an mlet serving weights file (metadata format {metadata.get('format')!r})")
        state = {k: f.get_tensor(k) for k in f.keys()}
    config = parse_json_text(metadata["model_config"], f"{path}: model_config metadata")  # bounded nesting
    return state, ServingModelConfig.from_dict(config)


def load_weights_model(path: PathLike) -> nn.Module:
    """The stock TorchRec serving model (``DLRMTrain``) rebuilt from the safetensors file alone."""
    state, config = read_weights(path)
    model = build_serving_model(config, torch.device("cpu"))
    model.load_state_dict(state, strict=True)
    return model.eval()
