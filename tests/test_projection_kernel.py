"""The batched MLET projection (modules/projection_kernel.py): the products and gradients of the
per-block definition, and no re-layout copy of the k-wide tensors (issue 29)."""

from typing import List, Tuple

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mlet_dist.modules.projection_kernel import TiledProjection, project_blocks

# (batch, blocks, c, d): the first goes through CPU baddbmm's small-matrix loop, the others
# through its per-block GEMM path (contraction x rows x cols >= 400).
SHAPES = [(3, 2, 4, 2), (64, 5, 16, 4), (130, 3, 32, 8)]


def per_block(values: torch.Tensor, weights: List[torch.Tensor]) -> torch.Tensor:
    """The definition: each block times its own W, side by side."""
    c = weights[0].shape[0]
    return torch.cat([values[:, i * c : (i + 1) * c] @ w for i, w in enumerate(weights)], dim=1)


def leaves(
    shape: Tuple[int, int, int, int], dtype: torch.dtype = torch.float32
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    batch, blocks, c, d = shape
    g = torch.Generator().manual_seed(sum(shape))
    values = torch.randn(batch, blocks * c, generator=g, dtype=dtype, requires_grad=True)
    weights = [torch.randn(c, d, generator=g, dtype=dtype, requires_grad=True) for _ in range(blocks)]
    return values, weights


@pytest.mark.parametrize("shape", SHAPES)
def test_products_and_gradients_match_the_definition(shape: Tuple[int, int, int, int]) -> None:
    values, weights = leaves(shape)
    upstream = torch.randn(shape[0], shape[1] * shape[3])
    got = project_blocks(values, [i * shape[2] for i in range(shape[1])], weights)
    got.backward(upstream)
    got_grads = [values.grad.clone()] + [w.grad.clone() for w in weights]
    values.grad = None
    for w in weights:
        w.grad = None
    want = per_block(values, weights)
    want.backward(upstream)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, [values.grad] + [w.grad for w in weights]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_gradcheck(shape: Tuple[int, int, int, int]) -> None:
    values, weights = leaves(shape, torch.float64)
    assert torch.autograd.gradcheck(TiledProjection.apply, (values, *weights))


def test_unset_buffer_contents_never_reach_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel writes into fresh buffers with beta=0: whatever they held (NaN here) is ignored."""
    real = torch.Tensor.new_empty

    def nan_filled(self: torch.Tensor, *size: object, **kwargs: object) -> torch.Tensor:
        return real(self, *size, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(torch.Tensor, "new_empty", nan_filled)
    values, weights = leaves(SHAPES[2])
    out = project_blocks(values, [i * SHAPES[2][2] for i in range(SHAPES[2][1])], weights)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(values.grad).all()
    assert all(torch.isfinite(w.grad).all() for w in weights)


def test_no_relayout_copy_of_pooled_tensors() -> None:
    """Forward and backward at the benchmark's shape copy nothing of (B, F, c) or (B, F, d) size:
    each such copy moved the k-wide gradient once more through memory (issue 29's profile)."""
    batch, blocks, c, d = 256, 26, 64, 16
    base = torch.randn(batch, blocks * c, requires_grad=True)
    weights = [torch.randn(c, d, requires_grad=True) for _ in range(blocks)]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        values = base * 1.0  # a non-leaf, like the lookup output
        out = project_blocks(values, [i * c for i in range(blocks)], weights)
        out.backward(torch.ones_like(out))
    big = {batch * blocks * c, batch * blocks * d}
    copies = [
        (e.key, e.input_shapes)
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key in ("aten::copy_", "aten::clone", "aten::contiguous")
        and any(shape and torch.Size(shape).numel() in big for shape in e.input_shapes if isinstance(shape, list))
    ]
    assert not copies, f"re-layout copies of pooled tensors: {copies}"


def test_whole_shard_projection_is_the_parameter_itself() -> None:
    """A table-wise owner's W slice is its parameter, not a slice of it: a slice adds a
    SliceBackward per table per step (a zero-filled k×d buffer and a copy) before accumulation."""
    from torch.distributed._shard.metadata import ShardMetadata

    from mlet_dist.distributed.sharded_projection import ShardedProjection

    shards = [
        ShardMetadata(shard_offsets=[0, 0], shard_sizes=[8, 4], placement="rank:0/cpu"),
        ShardMetadata(shard_offsets=[8, 0], shard_sizes=[8, 4], placement="rank:1/cpu"),
    ]
    whole = ShardedProjection(8, 4, 0.1, torch.device("cpu"), 0, shards[:1])
    assert whole.local_slice(0, 8) is whole.shards["rows_0"]
    assert whole.whole_shard_name(0, 8) == "rows_0"  # what the sharded collection fetches by name
    column = ShardedProjection(16, 4, 0.1, torch.device("cpu"), 1, shards)
    torch.testing.assert_close(column.local_slice(10, 3), column.shards["rows_8"][2:5])
    assert column.whole_shard_name(10, 3) is None and column.whole_shard_name(8, 8) == "rows_8"
