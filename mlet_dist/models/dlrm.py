"""DLRM over either collection, in the paper's Criteo shape by default.

TorchRec's DLRM is reused: it only needs ``embedding_bag_configs()`` to report the d-wide view,
which MLETEmbeddingBagCollection does. One change by default: no ReLU after the bottom MLP's last
layer (``bottom_mlp_output``, below).
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Union

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DenseArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import Perceptron

from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection


# How the bottom MLP's last (d-wide) layer ends. TorchRec's DenseArch and the reference DLRM put a
# ReLU there; at small d all d units can die (negative for every input), and then the dense
# features reach neither the interaction nor the loss for the rest of the run (issue 28: the
# slow MLET runs at d <= 4 had x = 0 from step 1-10 on; reports/small_d section 10). "linear" keeps
# the layer and drops its ReLU: same parameters, an output of either sign.
BOTTOM_MLP_OUTPUTS = ("linear", "relu")


@dataclass
class DLRMConfig:
    """Bottom MLP 13-512-256-64-d and top MLP 512-256-1 (d is appended from the tables)."""

    dense_in_features: int = 13
    bottom_mlp: List[int] = field(default_factory=lambda: [512, 256, 64])
    top_mlp: List[int] = field(default_factory=lambda: [512, 256, 1])
    bottom_mlp_output: str = "linear"
    # config.json files written before a field existed: the value those runs were trained with
    # (config_io.from_jsonable), not today's default; their bottom MLP ended in a ReLU.
    LEGACY_DEFAULTS: ClassVar[Dict[str, Any]] = {"bottom_mlp_output": "relu"}

    def __post_init__(self) -> None:
        if self.bottom_mlp_output not in BOTTOM_MLP_OUTPUTS:
            raise ValueError(
                f"--bottom-mlp-output must be one of {', '.join(BOTTOM_MLP_OUTPUTS)}, got {self.bottom_mlp_output!r}"
            )
        if not self.top_mlp or self.top_mlp[-1] != 1:
            raise ValueError(f"top_mlp must end in 1 (one logit), got {self.top_mlp}")
        if any(width < 1 for width in [*self.bottom_mlp, *self.top_mlp]):
            raise ValueError(f"MLP layer widths must be >= 1, got bottom {self.bottom_mlp}, top {self.top_mlp}")


def build_dlrm(
    collection: Union[EmbeddingBagCollection, MLETEmbeddingBagCollection],
    config: DLRMConfig = DLRMConfig(),
    dense_device: Optional[torch.device] = None,
) -> DLRM:
    dims = {c.embedding_dim for c in collection.embedding_bag_configs()}
    if len(dims) != 1:
        raise ValueError(f"DLRM's dot interaction needs one output width for all tables, got {dims}")
    (d,) = dims
    model = DLRM(
        embedding_bag_collection=collection,
        dense_in_features=config.dense_in_features,
        dense_arch_layer_sizes=[*config.bottom_mlp, d],
        over_arch_layer_sizes=list(config.top_mlp),
        dense_device=dense_device,
    )
    set_bottom_mlp_output(model.dense_arch, config.bottom_mlp_output)
    return model


def set_bottom_mlp_output(dense_arch: DenseArch, output: str) -> None:
    """Drop the ReLU after the bottom MLP's last layer for ``output="linear"`` (parameter names
    and shapes unchanged, so checkpoints of either kind load into the same structure)."""
    if output == "relu":
        return
    last = _last_perceptron(dense_arch)
    last._activation_fn = nn.Identity()


def bottom_mlp_output_of(model: nn.Module) -> Optional[str]:
    """ "linear" or "relu" for the first DenseArch in ``model`` (DMP-wrapped or not); None if it
    has none. Lets the serving export refuse a config that would rebuild another function."""
    for module in model.modules():
        if isinstance(module, DenseArch):
            return "linear" if isinstance(_last_perceptron(module)._activation_fn, nn.Identity) else "relu"
    return None


def _last_perceptron(dense_arch: DenseArch) -> Perceptron:
    """TorchRec's MLP keeps its layers as Perceptrons in ``_mlp``, each applying ``_activation_fn``
    to its Linear's output (torchrec/modules/mlp.py; tests/test_bottom_mlp_output.py fails loudly
    if an upgrade changes that)."""
    layers = getattr(dense_arch.model, "_mlp", None)
    if (
        not isinstance(layers, nn.Sequential)
        or not layers
        or not isinstance(layers[-1], Perceptron)
        or not hasattr(layers[-1], "_activation_fn")
    ):
        raise RuntimeError(
            "torchrec's DenseArch is no longer MLP._mlp[Perceptron(_activation_fn)]: "
            "--bottom-mlp-output linear needs updating for this torchrec"
        )
    return layers[-1]
