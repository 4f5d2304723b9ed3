"""The predict module TorchRec serving stacks expect: a ``torchrec.inference.modules.PredictModule``
with dict-of-tensor inputs, around the stock DLRM / DLRM_DCN of a serving directory.

    batch = {"float_features":           float32 [B, num_dense]   (already transformed),
             "id_list_features.lengths": int32   [F * B]          (feature-major: all rows of
                                                                   feature 0, then feature 1, ...),
             "id_list_features.values":  int64   [sum(lengths)]   (ids in the same order)}
    module(batch) -> {"default": float32 [B] click probabilities}

Tables are fp32, or fp16 / int8 through ``quantize_inference_model`` (TorchRec's quantized EBC on
fbgemm's inference TBE); ``script_predict_module`` runs TorchRec's fx tracer and
``torch.jit.script``, as ``torchrec.inference.dlrm_predict.DLRMPredictFactory`` does, so the result
runs where only torch and fbgemm_gpu are importable.
"""

from typing import Dict, List, Optional

import torch
from torch import nn
from torchrec.inference.modules import PredictModule, quantize_inference_model
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import MODULE_ATTR_ROW_ALIGNMENT_INT
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

TABLE_PRECISIONS: Dict[str, Optional[torch.dtype]] = {"fp32": None, "fp16": torch.float16, "int8": torch.int8}
CPU_ROW_ALIGNMENT = 4  # as mlet_dist.serving.quantize: TorchRec's 16 is for GPUs


class ServingPredictModule(PredictModule):
    """``{"float_features", "id_list_features.lengths", "id_list_features.values"} -> {"default": probs}``.

    Wraps the DLRM (``DLRMTrain.model``) of a serving model; ``feature_names`` fixes the order of
    the jagged inputs (the input contract)."""

    def __init__(self, model: nn.Module, feature_names: List[str], device: str = "cpu") -> None:
        super().__init__(model, device)
        self.feature_names: List[str] = list(feature_names)

    def predict_forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        sparse = KeyedJaggedTensor(
            keys=self.feature_names,
            lengths=batch["id_list_features.lengths"],
            values=batch["id_list_features.values"],
        )
        logits = self.predict_module(batch["float_features"], sparse)
        probs = torch.sigmoid(logits.float())
        return {"default": probs.reshape([probs.size(0)])}


def _ebc(model: nn.Module) -> nn.Module:
    return model.sparse_arch.embedding_bag_collection  # type: ignore[union-attr,return-value]


def build_predict_module(
    serving_model: nn.Module, precision: str = "fp32", device: str = "cpu"
) -> ServingPredictModule:
    """A predict module around ``serving_model`` (a ``DLRMTrain`` from ``load_serving_model``; used
    in place: pass a fresh copy per precision). fp16 / int8 tables via ``quantize_inference_model``."""
    if precision not in TABLE_PRECISIONS:
        raise ValueError(f"table precision must be one of {sorted(TABLE_PRECISIONS)}, got {precision!r}")
    net = getattr(serving_model, "model", serving_model)
    ebc = _ebc(net)
    if not isinstance(ebc, EmbeddingBagCollection):
        raise ValueError(f"expected a float TorchRec EmbeddingBagCollection, got {type(ebc).__name__}")
    features = [f for c in ebc.embedding_bag_configs() for f in c.feature_names]
    module = ServingPredictModule(net, features, device)
    dtype = TABLE_PRECISIONS[precision]
    if dtype is not None:
        if torch.device(device).type == "cpu":
            setattr(ebc, MODULE_ATTR_ROW_ALIGNMENT_INT, CPU_ROW_ALIGNMENT)
        quantize_inference_model(module, quantization_dtype=dtype)
    return module.eval()


def script_predict_module(module: ServingPredictModule, sample: Dict[str, torch.Tensor]) -> torch.jit.ScriptModule:
    """TorchRec's fx tracer (fbgemm's inference TBE kept as a leaf) then ``torch.jit.script``.

    ``sample`` is run once before and after, as TorchRec's own factory does (it initialises the
    quantized EBC's cached feature order)."""
    from torchrec.fx.tracer import Tracer

    for param in module.parameters():  # scores carry no autograd graph for callers without no_grad
        param.requires_grad_(False)
    with torch.inference_mode():
        module(sample)
    tracer = Tracer(leaf_modules=["IntNBitTableBatchedEmbeddingBagsCodegen"])
    graph = tracer.trace(module)
    gm = torch.fx.GraphModule(module, graph)
    scripted = torch.jit.script(gm)
    with torch.inference_mode():
        scripted(sample)
    return scripted
