"""The one MLET projection kernel: k-wide pooled slices times their tables' W, for the unsharded
collection (all of a row's features) and the sharded one (the blocks a rank owns, column-shard
slices included), so both paths compute exactly the same products in the same way."""

from typing import Any, Optional, Sequence, Tuple

import torch


class TiledProjection(torch.autograd.Function):
    """``values`` (B, F·c), F side-by-side blocks, times ``weights`` (F tensors, c×d) -> (B, F·d).

    One batched matmul over the F blocks, reading and writing the batch-major layouts that the
    lookup produces and the all-to-all takes: the GEMMs run on strided views and write straight
    into batch-major buffers. Autograd's bmm on transposed views instead copies the (B, F, d)
    output in forward and, in backward, the k-wide (B, F, c) input gradient (issue 29's profile:
    the largest avoidable cost of the MLET step).

    The F weights come in as separate inputs and are stacked inside: a ``torch.stack`` in front
    of the function would add a StackBackward node (F ``select`` ops) to every backward. Each W's
    gradient is a (c, d) view of the one batched gradient.
    """

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(weights)
        batch = values.shape[0]
        blocks, inner, out = stacked.shape
        ctx.save_for_backward(values, stacked)
        return strided_bmm(values.reshape(batch, blocks, inner), stacked).view(batch, blocks * out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        values, stacked = ctx.saved_tensors
        batch = values.shape[0]
        blocks, inner, out = stacked.shape
        grad3 = grad.reshape(batch, blocks, out)
        grad_values: Optional[torch.Tensor] = None
        grad_weights: Tuple[Optional[torch.Tensor], ...] = (None,) * blocks
        if ctx.needs_input_grad[0]:
            grad_values = strided_bmm(grad3, stacked.transpose(1, 2)).view(batch, blocks * inner)
        if any(ctx.needs_input_grad[1:]):
            x = values.reshape(batch, blocks, inner).permute(1, 2, 0)  # (F, c, B), a view
            grad_weights = torch.bmm(x, grad3.transpose(0, 1)).unbind(0)
        return (grad_values, *grad_weights)


def strided_bmm(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, F, c) x (F, c, e) -> (B, F, e), batch-major, with no re-layout copy: baddbmm_ with
    beta=0 into the transposed view of a fresh (B, F, e) buffer writes each block's product in
    place (its unset contents are ignored, NaN included)."""
    result = x.new_empty(x.shape[0], x.shape[1], weights.shape[2])
    result.transpose(0, 1).baddbmm_(x.transpose(0, 1), weights, beta=0)
    return result


def project_blocks(values: torch.Tensor, starts: Sequence[int], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``values[:, starts[i] : starts[i] + weights[i].shape[0]] @ weights[i]`` for every block,
    concatenated along dim 1. When the blocks tile ``values`` with one shape, one batched matmul
    (TiledProjection) replaces F small ones (much cheaper for 26 tables)."""
    f = len(weights)
    c, d = weights[0].shape
    tiled = list(starts) == [i * c for i in range(f)] and values.shape[1] == f * c
    if tiled and len({w.shape for w in weights}) == 1:
        return TiledProjection.apply(values, *weights)
    return torch.cat([values[:, s : s + w.shape[0]] @ w for s, w in zip(starts, weights)], dim=1)
