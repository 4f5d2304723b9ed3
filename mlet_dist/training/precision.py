"""Mixed precision for the dense part of the ranking model (``--dense-precision``).

torch.autocast runs the MLPs and the interaction (or cross network) in bf16 while the weights
stay fp32 masters, so checkpoints, the collapse and the export see fp32 tensors as before. The
sharded embedding lookups (fbgemm's fused kernels, the owner-side MLET projections) are no
autocast ops: their outputs stay fp32 (tests/test_mixed_precision.py checks it). The network's
output is cast back to fp32, so the loss and the metrics are computed in fp32.

fp16 is refused: it needs loss scaling (GradScaler), and a scaled loss would scale the gradients
the tables' fused optimizer applies inside ``backward()``, where an overflowing step cannot be
skipped either. bf16 has fp32's exponent range and needs no scaling.
"""

import functools
from typing import Any, Callable, Dict

import torch
from torch import nn

DENSE_PRECISIONS: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP16_REFUSAL = (
    "--dense-precision fp16 is not supported: it needs loss scaling, which would also scale the gradients "
    "the tables' fused optimizer applies inside backward (and an overflowing step could not be skipped "
    "there); use --dense-precision bf16"
)


def _autocast(forward: Callable[..., Any], device_type: str, dtype: torch.dtype) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs).float()  # the loss and the metrics in fp32

    return run


def autocast_dense(model: nn.Module, precision: str, device: torch.device) -> int:
    """Run every ranking network in ``model`` (a module with a ``sparse_arch``: TorchRec's DLRM,
    our DCN-v2) under autocast at ``precision``. Call after sharding, on the sharded model.
    Returns how many networks it wrapped (0 for fp32)."""
    if precision == "fp16":
        raise ValueError(FP16_REFUSAL)
    dtype = DENSE_PRECISIONS[precision]
    if dtype == torch.float32:
        return 0
    networks = [m for m in model.modules() if isinstance(getattr(m, "sparse_arch", None), nn.Module)]
    for network in networks:
        network.forward = _autocast(network.forward, device.type, dtype)
    return len(networks)
