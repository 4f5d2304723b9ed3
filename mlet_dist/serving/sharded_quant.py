"""Sharded quantized inference: TorchRec's ``shard_quant_model`` on a quantized predict module.

TorchRec's inference sharding is one process driving ``world_size`` devices (rank r -> cuda:r):
``ShardedQuantEmbeddingBagCollection`` holds one lookup per rank and moves features between them
without a process group. On CPU every rank maps to the cpu device, so the shards share one memory;
the same code serves 2 GPUs with ``compute_device="cuda"``.

``shard_quant_model`` builds fresh (uninitialised) TBEs for the shards; the trained rows are moved
over table by table with TorchRec's ``get_table_to_weights_from_tbe`` / ``assign_weights_to_tbe``,
which is why the plan is table-wise (a whole table per rank, TorchRec's default constraint here).
"""

from typing import Any, Dict, List, Tuple

import torch
from torchrec.distributed.global_settings import get_propogate_device, set_propogate_device
from torchrec.distributed.fused_params import FUSED_PARAM_QUANT_STATE_DICT_SPLIT_SCALE_BIAS
from torchrec.distributed.quant_embeddingbag import QuantEmbeddingBagCollectionSharder, ShardedQuantEmbeddingBagCollection
from torchrec.distributed.types import ModuleSharder, ShardingPlan
from torchrec.inference.modules import (
    DEFAULT_FUSED_PARAMS,
    assign_weights_to_tbe,
    get_table_to_weights_from_tbe,
    shard_quant_model,
)

from mlet_dist.serving.predict_module import ServingPredictModule


def shard_predict_module(
    module: ServingPredictModule, world_size: int = 2, device: str = "cpu"
) -> Tuple[torch.nn.Module, ShardingPlan]:
    """The quantized predict module with its tables sharded table-wise over ``world_size`` ranks
    (in place; returns the sharded module and TorchRec's plan)."""
    weights = get_table_to_weights_from_tbe(module)
    if not weights:
        raise ValueError("shard_quant_model shards quantized tables: build the module with precision fp16 or int8")
    if world_size > len(weights):
        raise ValueError(f"{len(weights)} table(s) cannot be spread table-wise over {world_size} ranks")
    previous = get_propogate_device()
    set_propogate_device(True)  # else the lookups are placed on cuda whatever compute_device says
    try:
        sharded, plan = shard_quant_model(module, world_size=world_size, compute_device=device, sharding_device=device,
                                          sharders=_sharders(weights))
        assign_weights_to_tbe(sharded, weights)
        with torch.inference_mode():  # the input dist is built on the first call, under the same flag
            sharded(_one_row(len(module.feature_names), module.predict_module.dense_arch, device))
    finally:
        set_propogate_device(previous)
    return sharded.eval(), plan


def _sharders(weights: Dict[str, Any]) -> List[ModuleSharder[torch.nn.Module]]:
    """TorchRec's default inference sharder; fp16 tables (no scale/bias rows) need the state dict's
    scale/bias split off: with it TorchRec 1.8 fails in ``_initialize_torch_state`` ('NoneType' shape)."""
    has_qparams = all(qparams is not None for _, qparams in weights.values())  # (rows, scale/bias) per table
    fused = {**DEFAULT_FUSED_PARAMS, FUSED_PARAM_QUANT_STATE_DICT_SPLIT_SCALE_BIAS: has_qparams}
    return [QuantEmbeddingBagCollectionSharder(fused_params=fused)]  # type: ignore[list-item]


def _one_row(num_features: int, dense_arch: torch.nn.Module, device: str) -> Dict[str, torch.Tensor]:
    width = next(p for p in dense_arch.parameters() if p.dim() == 2).shape[1]
    return {
        "float_features": torch.zeros(1, width, device=device),
        "id_list_features.lengths": torch.ones(num_features, dtype=torch.int32, device=device),
        "id_list_features.values": torch.zeros(num_features, dtype=torch.int64, device=device),
    }


def table_bytes_per_rank(sharded: torch.nn.Module) -> Dict[int, int]:
    """Bytes of table storage each rank's lookup holds (rank r's lives on cuda:r with GPUs): the
    memory split that lets tables larger than one device be served. Reads TorchRec's per-rank
    lookups (``_lookups[i]._embedding_lookups_per_rank``, empty ranks skipped, ``_is_empty_rank``)."""
    held: Dict[int, int] = {}
    for module in sharded.modules():
        if not isinstance(module, ShardedQuantEmbeddingBagCollection):
            continue
        for lookup in module._lookups:
            ranks = [r for r, empty in enumerate(lookup._is_empty_rank) if not empty]
            for rank, per_rank in zip(ranks, lookup._embedding_lookups_per_rank, strict=True):
                held[rank] = held.get(rank, 0) + sum(b.numel() * b.element_size() for b in per_rank.buffers())
    return held


def ranks_of_tables(plan: ShardingPlan) -> "dict[str, list[int]]":
    """table -> ranks holding it, from the plan."""
    return {
        table: list(ps.ranks or [])
        for module_plan in plan.plan.values()
        for table, ps in module_plan.items()  # type: ignore[attr-defined]
    }
