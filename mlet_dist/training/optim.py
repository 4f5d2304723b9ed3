"""Optimizers: fused (in-backward, fbgemm) for embedding tables, torch.optim for the rest.

MLET projections are dense parameters here, so they take the dense optimizer.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, Type

import torch
from torch import nn
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from mlet_dist.distributed.sharding import embedding_collections

EMBEDDING_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
}
DENSE_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "adam": torch.optim.Adam,
}


@dataclass
class OptimConfig:
    """Defaults picked by validation AUC on the Criteo sample (rowwise Adagrad 0.05 for tables,
    Adam 1e-3 for the MLPs and projections); a dense Adagrad at 0.05 diverged at step 2."""

    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.05
    dense_optimizer: str = "adam"
    dense_lr: float = 1e-3
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(
                f"--embedding-optimizer must be one of {sorted(EMBEDDING_OPTIMIZERS)} "
                f"(the fused CPU/GPU kernels); got {self.embedding_optimizer!r}"
            )
        if self.dense_optimizer not in DENSE_OPTIMIZERS:
            raise ValueError(f"--dense-optimizer must be one of {sorted(DENSE_OPTIMIZERS)}; got {self.dense_optimizer!r}")
        for flag, value in (("--embedding-lr", self.embedding_lr), ("--dense-lr", self.dense_lr), ("eps", self.eps)):
            if not (math.isfinite(value) and value > 0):  # nan <= 0 is False: test finiteness
                raise ValueError(f"{flag} must be a finite number > 0, got {value}")

    def _kwargs(self, name: str, lr: float) -> Dict[str, Any]:
        return {"lr": lr} if name == "sgd" else {"lr": lr, "eps": self.eps}


def attach_fused_embedding_optimizer(model: nn.Module, config: OptimConfig) -> None:
    """Mark every table for an in-backward fused optimizer; call before DMP."""
    cls = EMBEDDING_OPTIMIZERS[config.embedding_optimizer]
    for ebc in embedding_collections(model):
        apply_optimizer_in_backward(
            cls, ebc.parameters(), config._kwargs(config.embedding_optimizer, config.embedding_lr)
        )


def build_optimizer(sharded_model: nn.Module, config: OptimConfig) -> CombinedOptimizer:
    """The DMP's fused table optimizers plus a dense optimizer over everything else."""
    dense_params = dict(in_backward_optimizer_filter(sharded_model.named_parameters()))
    cls = DENSE_OPTIMIZERS[config.dense_optimizer]
    kwargs = config._kwargs(config.dense_optimizer, config.dense_lr)
    dense = KeyedOptimizerWrapper(dense_params, lambda params: cls(params, **kwargs))
    return CombinedOptimizer([sharded_model.fused_optimizer, dense])  # type: ignore[attr-defined]
