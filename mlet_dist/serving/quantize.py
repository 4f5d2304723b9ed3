"""fp16 / int8 serving tables through TorchRec's quantized inference EBC (fbgemm TBE kernels; the
CPU build of fbgemm-gpu runs them).

int8 is row-wise: each row stores d bytes plus an fp16 scale and bias (4 bytes). Rows are padded
to ``row_alignment`` bytes; TorchRec's default of 16 suits GPUs, on CPU 4 is enough and keeps an
int8 row of d=16 at 20 bytes instead of 32.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import torch
import torch.quantization as quant
from torchrec.models.dlrm import DLRMTrain
from torchrec.modules.embedding_configs import QuantConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import (
    MODULE_ATTR_ROW_ALIGNMENT_INT,
    EmbeddingBagCollection as QuantEmbeddingBagCollection,
)

PRECISIONS: Dict[str, Optional[torch.dtype]] = {"fp32": None, "fp16": torch.float16, "int8": torch.qint8}
CPU_ROW_ALIGNMENT = 4


@dataclass
class TableMemory:
    precision: str
    table_bytes: int  # bytes of the embedding tables as stored for lookups
    fp32_bytes: int  # the same tables in fp32

    @property
    def saved_fraction(self) -> float:
        return 1.0 - self.table_bytes / max(self.fp32_bytes, 1)


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages: tensors that view one storage count it once."""
    seen: Dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def float_table_bytes(ebc: EmbeddingBagCollection) -> int:
    return sum(c.num_embeddings * c.embedding_dim * 4 for c in ebc.embedding_bag_configs())


def quantized_table_bytes(qebc: QuantEmbeddingBagCollection) -> int:
    """Bytes of the TBE weight storage (rows, scale/bias, alignment padding)."""
    return _storage_bytes(bag.weight for bag in qebc.embedding_bags.values())


def quantize_ebc(
    ebc: EmbeddingBagCollection, precision: str, row_alignment: Optional[int] = None
) -> QuantEmbeddingBagCollection:
    """TorchRec's ``QuantEmbeddingBagCollection.from_float`` with a weight-dtype qconfig."""
    if precision not in ("fp16", "int8"):
        raise ValueError(f"precision must be fp16 or int8 here, got {precision!r}")
    dtype = PRECISIONS[precision]
    ebc.qconfig = QuantConfig(
        activation=quant.PlaceholderObserver.with_args(dtype=torch.float),
        weight=quant.PlaceholderObserver.with_args(dtype=dtype),
    )
    device = next(iter(ebc.parameters())).device
    alignment = row_alignment if row_alignment is not None else (CPU_ROW_ALIGNMENT if device.type == "cpu" else None)
    if alignment is not None:
        setattr(ebc, MODULE_ATTR_ROW_ALIGNMENT_INT, alignment)
    try:
        return QuantEmbeddingBagCollection.from_float(ebc)
    finally:
        del ebc.qconfig


def quantize_serving_model(model: DLRMTrain, precision: str) -> TableMemory:
    """Swap the serving model's EBC (``model.model.sparse_arch.embedding_bag_collection``) for
    its quantized twin, in place; fp32 leaves it as is. Returns the table memory."""
    sparse_arch = model.model.sparse_arch
    ebc = sparse_arch.embedding_bag_collection
    if isinstance(ebc, QuantEmbeddingBagCollection):
        raise ValueError("the model's tables are already quantized")
    fp32 = float_table_bytes(ebc)
    if precision == "fp32":
        return TableMemory("fp32", _storage_bytes(p for p in ebc.parameters()), fp32)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    qebc = quantize_ebc(ebc, precision)
    sparse_arch.embedding_bag_collection = qebc
    return TableMemory(precision, quantized_table_bytes(qebc), fp32)
