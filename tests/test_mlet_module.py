"""MLETEmbeddingBagCollection contract, initialisation, bad input and collapse equivalence."""

import math

import pytest
import torch
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mlet_dist import MLETEmbeddingBagCollection, MLETTableConfig, collapse, collapse_model, collapse_table
from mlet_dist.models import DLRMConfig, build_dlrm

COLLAPSE_TOL = 1e-5


def make_tables(pooling: PoolingType = PoolingType.SUM) -> list:
    return [
        MLETTableConfig(
            "t0", num_embeddings=50, inner_dim=32, embedding_dim=4, feature_names=["f0", "f1"], pooling=pooling
        ),
        MLETTableConfig("t1", num_embeddings=20, inner_dim=16, embedding_dim=4, feature_names=["f2"], pooling=pooling),
    ]


def make_kjt(batch: int, weighted: bool = False, seed: int = 0) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    keys = ["f0", "f1", "f2"]
    rows = {"f0": 50, "f1": 50, "f2": 20}
    lengths = torch.randint(0, 4, (len(keys) * batch,), generator=g)  # includes empty bags
    values = torch.cat(
        [
            torch.randint(0, rows[k], (int(lengths[i * batch : (i + 1) * batch].sum()),), generator=g)
            for i, k in enumerate(keys)
        ]
    )
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths, weights=weights)


def reference_pooled(mlet: MLETEmbeddingBagCollection, kjt: KeyedJaggedTensor, feature: str) -> torch.Tensor:
    """Straight from the definition: pool rows of T, then multiply by W."""
    cfg = {f: c for c in mlet.mlet_configs() for f in c.feature_names}[feature]
    table = mlet.wide.embedding_bags[cfg.name].weight
    w = mlet.projections[cfg.name].weight
    jt = kjt[feature]
    out = []
    for i, ids in enumerate(jt.to_dense()):
        rows = table[ids]
        if jt.weights_or_none() is not None:
            rows = rows * jt.to_dense_weights()[i].unsqueeze(1)
        pooled = rows.sum(0) if ids.numel() else torch.zeros(table.shape[1])
        if cfg.pooling == PoolingType.MEAN and ids.numel():
            pooled = pooled / ids.numel()
        out.append(pooled @ w)
    return torch.stack(out)


# Weighted mean pooling is not a TorchRec pooling mode, so it is not among the cases.
POOLING_CASES = [(PoolingType.SUM, False), (PoolingType.MEAN, False), (PoolingType.SUM, True)]


@pytest.mark.parametrize("pooling,weighted", POOLING_CASES)
def test_forward_matches_definition(pooling: PoolingType, weighted: bool) -> None:
    torch.manual_seed(0)
    mlet = MLETEmbeddingBagCollection(make_tables(pooling), is_weighted=weighted)
    kjt = make_kjt(batch=7, weighted=weighted)
    out = mlet(kjt)
    assert out.values().shape == (7, 12)
    assert sorted(out.keys()) == ["f0", "f1", "f2"]
    for f in ["f0", "f1", "f2"]:
        torch.testing.assert_close(out[f], reference_pooled(mlet, kjt, f), atol=1e-6, rtol=1e-5)


def test_embedding_bag_configs_report_output_width() -> None:
    mlet = MLETEmbeddingBagCollection(make_tables())
    assert [c.embedding_dim for c in mlet.embedding_bag_configs()] == [4, 4]
    assert [c.embedding_dim for c in mlet.wide.embedding_bag_configs()] == [32, 16]
    assert mlet.embedding_bag_configs()[0].feature_names == ["f0", "f1"]


def test_initialisation_follows_the_paper() -> None:
    torch.manual_seed(0)
    cfg = MLETTableConfig("t", num_embeddings=1000, inner_dim=256, embedding_dim=64, projection_init_std=0.05)
    mlet = MLETEmbeddingBagCollection([cfg])
    table = mlet.wide.embedding_bags["t"].weight
    bound = math.sqrt(1 / 1000)
    assert table.abs().max() <= bound + 1e-7
    assert table.abs().max() > 0.9 * bound  # uniform fills the range
    w = mlet.projections["t"].weight
    assert w.shape == (256, 64)
    assert abs(w.std().item() - 0.05) < 0.003
    assert abs(w.mean().item()) < 0.003
    default = MLETTableConfig("u", num_embeddings=10, inner_dim=64, embedding_dim=16)
    assert default.init_std == pytest.approx(math.sqrt(2 / 80))


def test_projection_has_no_bias_and_is_linear() -> None:
    mlet = MLETEmbeddingBagCollection(make_tables())
    names = {n for n, _ in mlet.projections.named_parameters()}
    assert names == {"t0.weight", "t1.weight"}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 32, generator=g), torch.randn(3, 32, generator=g)
    proj = mlet.projections["t0"]
    # Linear: superposition with coefficients of both signs (a ReLU or a bias breaks it), and
    # exactly x @ W (what collapse() multiplies into the table).
    torch.testing.assert_close(proj(2.5 * x - 1.5 * y), 2.5 * proj(x) - 1.5 * proj(y))
    torch.testing.assert_close(proj(x), x @ proj.weight)
    torch.testing.assert_close(proj(torch.zeros(1, 32)), torch.zeros(1, 4))


def test_k_smaller_than_d_is_rejected() -> None:
    with pytest.raises(ValueError, match="k=8 is smaller than embedding_dim d=16"):
        MLETTableConfig("t", num_embeddings=10, inner_dim=8, embedding_dim=16)


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="num_embeddings"):
        MLETTableConfig("t", num_embeddings=0, inner_dim=8, embedding_dim=4)
    with pytest.raises(ValueError, match="duplicate"):
        MLETEmbeddingBagCollection([MLETTableConfig("t", 5, 8, 4), MLETTableConfig("t", 5, 8, 4)])
    with pytest.raises(ValueError, match="two tables"):
        MLETEmbeddingBagCollection([MLETTableConfig("a", 5, 8, 4, ["f"]), MLETTableConfig("b", 5, 8, 4, ["f"])])


def test_unknown_feature_is_a_clear_error() -> None:
    mlet = MLETEmbeddingBagCollection(make_tables())
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1", "f2", "zz"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 1, 1])
    )
    with pytest.raises(ValueError, match=r"unknown \['zz'\]"):
        mlet(kjt)


def test_id_out_of_range_is_a_clear_error() -> None:
    mlet = MLETEmbeddingBagCollection(make_tables())
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1", "f2"], values=torch.tensor([1, 2, 20]), lengths=torch.tensor([1, 1, 1])
    )
    with pytest.raises(ValueError, match=r"feature 'f2': ids must lie in \[0, 20\)"):
        mlet(kjt)
    negative = KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1", "f2"], values=torch.tensor([-1, 2, 3]), lengths=torch.tensor([1, 1, 1])
    )
    with pytest.raises(ValueError, match="feature 'f0'"):
        mlet(negative)


def test_weights_mismatch_is_a_clear_error() -> None:
    mlet = MLETEmbeddingBagCollection(make_tables())
    with pytest.raises(ValueError, match="is_weighted=False"):
        mlet(make_kjt(batch=3, weighted=True))


def test_empty_bags_give_zero_vectors() -> None:
    mlet = MLETEmbeddingBagCollection(make_tables())
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1", "f2"], values=torch.tensor([3]), lengths=torch.tensor([0, 1, 0, 0, 0, 0])
    )
    out = mlet(kjt)
    assert out.values().shape == (2, 12)
    torch.testing.assert_close(out["f0"][0], torch.zeros(4))
    torch.testing.assert_close(out["f2"], torch.zeros(2, 4))
    assert out["f0"][1].abs().sum() > 0


def test_batch_with_no_rows() -> None:
    mlet = MLETEmbeddingBagCollection(make_tables())
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1", "f2"], values=torch.tensor([], dtype=torch.long), lengths=torch.tensor([], dtype=torch.long)
    )
    out = mlet(kjt)
    assert out.values().shape == (0, 12)


def test_collapse_table_chunked_equals_matmul() -> None:
    t, w = torch.randn(1003, 64), torch.randn(64, 8)
    torch.testing.assert_close(collapse_table(t, w, chunk_rows=100), t @ w)
    with pytest.raises(ValueError, match="cannot collapse"):
        collapse_table(t, torch.randn(32, 8))


@pytest.mark.parametrize("pooling,weighted", POOLING_CASES)
def test_collapse_is_a_stock_ebc_with_equal_outputs(pooling: PoolingType, weighted: bool) -> None:
    torch.manual_seed(1)
    mlet = MLETEmbeddingBagCollection(make_tables(pooling), is_weighted=weighted)
    ebc = collapse(mlet, chunk_rows=7)
    assert type(ebc) is EmbeddingBagCollection
    assert [c.embedding_dim for c in ebc.embedding_bag_configs()] == [4, 4]
    for name in ["t0", "t1"]:
        torch.testing.assert_close(
            ebc.embedding_bags[name].weight,
            mlet.wide.embedding_bags[name].weight @ mlet.projections[name].weight,
        )
    kjt = make_kjt(batch=16, weighted=weighted, seed=3)
    a, b = mlet(kjt), ebc(kjt)
    for f in ["f0", "f1", "f2"]:
        assert (a[f] - b[f]).abs().max() <= COLLAPSE_TOL


def test_collapsed_dlrm_predicts_the_same() -> None:
    torch.manual_seed(2)
    tables = [MLETTableConfig(f"t{i}", 30, 16, 4, [f"f{i}"]) for i in range(3)]
    model = build_dlrm(
        MLETEmbeddingBagCollection(tables), DLRMConfig(dense_in_features=5, bottom_mlp=[8], top_mlp=[8, 1])
    )
    collapsed = collapse_model(model)
    assert type(collapsed.sparse_arch.embedding_bag_collection) is EmbeddingBagCollection
    assert isinstance(model.sparse_arch.embedding_bag_collection, MLETEmbeddingBagCollection)  # not in place
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1", "f2"], values=torch.randint(0, 30, (24,)), lengths=torch.ones(24, dtype=torch.long)
    )
    dense = torch.randn(8, 5)
    assert (model(dense, kjt) - collapsed(dense, kjt)).abs().max() <= COLLAPSE_TOL
    with pytest.raises(ValueError, match="no MLETEmbeddingBagCollection"):
        collapse_model(collapsed)


@pytest.mark.parametrize("pooling", [PoolingType.SUM, PoolingType.MEAN])
def test_mlet_trains_with_gradients_to_table_and_projection(pooling: PoolingType) -> None:
    """Gradients of T and W equal autograd through the definition (pool rows of T, then @ W)."""
    torch.manual_seed(0)
    mlet = MLETEmbeddingBagCollection(make_tables(pooling))
    kjt = make_kjt(batch=5)
    out = mlet(kjt)
    out.values().pow(2).sum().backward()
    reference = MLETEmbeddingBagCollection(make_tables(pooling))
    reference.load_state_dict(mlet.state_dict())
    loss = sum(reference_pooled(reference, kjt, f).pow(2).sum() for f in ["f0", "f1", "f2"])
    loss.backward()
    for name in ["t0", "t1"]:
        for got, want in [
            (mlet.projections[name].weight.grad, reference.projections[name].weight.grad),
            (mlet.wide.embedding_bags[name].weight.grad, reference.wide.embedding_bags[name].weight.grad),
        ]:
            assert got is not None and want is not None
            assert want.abs().max() > 1e-3  # the gradient is not trivially zero
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_weighted_mean_is_refused() -> None:
    """One behaviour: per-sample weights with MEAN are refused when the collection is built
    (TorchRec's unsharded EBC would raise NotImplementedError at the first forward, the sharded
    row-wise path would divide by the weight sum)."""
    with pytest.raises(ValueError, match=r"MEAN pooling in a weighted collection"):
        MLETEmbeddingBagCollection(make_tables(PoolingType.MEAN), is_weighted=True)
    tables = make_tables(PoolingType.SUM)[:1] + make_tables(PoolingType.MEAN)[1:]
    with pytest.raises(ValueError, match=r"tables \['t1'\]"):
        MLETEmbeddingBagCollection(tables, is_weighted=True)
    MLETEmbeddingBagCollection(make_tables(PoolingType.MEAN), is_weighted=False)  # MEAN alone is fine


def test_fx_trace_computes_the_eager_output_and_keeps_the_checks() -> None:
    """TorchRec's train pipeline traces the model with torch.fx (mlet-train --projection-after-comm
    leaves this collection unsharded around a sharded ``wide``): the traced graph must compute the
    projected output, not the k-wide one, and still reject a bad id."""
    from torchrec.fx import symbolic_trace

    torch.manual_seed(0)
    mlet = MLETEmbeddingBagCollection(make_tables())
    kjt = make_kjt(6)
    traced = symbolic_trace(mlet)
    eager, got = mlet(kjt), traced(kjt)
    assert got.keys() == eager.keys() and got.length_per_key() == [4, 4, 4]
    assert torch.equal(got.values(), eager.values())
    bad = KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1", "f2"], values=torch.tensor([0, 1, 20]), lengths=torch.tensor([1, 1, 1])
    )
    with pytest.raises(ValueError, match="feature 'f2'"):
        traced(bad)
