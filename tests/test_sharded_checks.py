"""Sharded correctness checks on 2 gloo ranks against single-process references, one launch
(tests/workers/sharded_checks_worker.py) shared by the tests of this file.

Tolerances: forward outputs within 1e-5 absolute of the unsharded collection, where the error
each test guards against is O(|output|) (an output divided by a bag length of 2-4); accumulated
gradients within 1e-5 of the expected sum, where reducing twice changes them by O(1).
"""

from typing import Any, Dict

import pytest
import torch

from dist_launch import ROOT, torchrun

WORKER = ROOT / "tests" / "workers" / "sharded_checks_worker.py"
TOL = 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("sharded_checks") / "checks.pt"
    torchrun(WORKER, ["--out", str(out)], nproc=2)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("collection", ["mlet", "baseline"])
def test_mean_pooling_mixed_with_other_sharding_types(results: Dict[str, Any], collection: str) -> None:
    """RW/TWRW MEAN tables next to TW/CW/DP tables: every output equals the unsharded one
    (TorchRec 1.8 alone divides the TW/CW/DP outputs by their bag length here)."""
    for rank, per_rank in enumerate(results["per_rank"]):
        r = per_rank["mean_pooling"][collection]
        assert set(r["sharding"].values()) == {
            "row_wise", "table_row_wise", "table_wise", "column_wise", "data_parallel"
        }, r["sharding"]
        assert r["shards"]["t_cw_mean"] >= 2, "the column-wise table was not split"
        for key, diff in r["diff"].items():
            assert r["scale"][key] > 1e-3, f"{key}: output too small for the check to mean anything"
            assert diff <= TOL, f"rank {rank} {collection} {key}: differs by {diff} (|ref| {r['scale'][key]})"


@pytest.mark.parametrize("mode", ["sum", "average"])
def test_replicated_projection_gradient_accumulates(results: Dict[str, Any], mode: str) -> None:
    """Two micro-batch backwards: .grad is the sum of the reduced micro-batch gradients."""
    for per_rank in results["per_rank"]:
        r = per_rank["grad_accumulation"][mode]
        assert r["scale"] > 0.5
        assert r["max_diff"] <= TOL, r


def test_sharded_input_dist_checks_weights(results: Dict[str, Any]) -> None:
    for per_rank in results["per_rank"]:
        w = per_rank["weights"]
        assert "is_weighted=False" in w["weighted=False"], w
        assert "carries no weights" in w["weighted=True"], w


def test_the_injected_ebc_sharder_builds_the_wide_tables(results: Dict[str, Any]) -> None:
    """The MLET sharder shards the k-wide tables with the EBC sharder it was given (TorchRec's
    fp_embeddingbag pattern): that sharder is called, and its fused params (here IGNORE bounds
    checks; ours would be FATAL, TorchRec's default WARNING) reach every fused kernel."""
    for per_rank in results["per_rank"]:
        r = per_rank["injected"]
        assert r["sharded"] == ["EmbeddingBagCollection at wide"], r
        assert r["modes"] == ["IGNORE"], r
        assert r["out_dims"] == [8, 8], r  # d-wide outputs: the projection ran on the injected lookups
        assert "IGNORE" in r["fused_params"], r  # the planner sees the injected sharder's params


def test_the_mlet_sharder_offers_the_injected_sharders_types() -> None:
    """Sharding types and kernels come from the injected EBC sharder, less what MLET lacks:
    ours offers row-wise on CPU, TorchRec's default does not."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    from mlet_dist.distributed.sharded_mlet import SUPPORTED, MLETEmbeddingBagCollectionSharder
    from mlet_dist.distributed.sharding import EBCSharder

    ours = MLETEmbeddingBagCollectionSharder(EBCSharder()).sharding_types("cpu")
    stock = MLETEmbeddingBagCollectionSharder().sharding_types("cpu")
    assert "row_wise" in ours and "table_row_wise" in ours, ours
    assert "row_wise" not in stock, stock
    assert set(ours) <= SUPPORTED and "table_column_wise" not in ours, ours
    assert set(EmbeddingBagCollectionSharder().sharding_types("cpu")) & SUPPORTED == set(stock)


def test_feature_shared_by_a_row_wise_mean_table_and_another_is_refused() -> None:
    """The divisor is per KJT feature: one feature cannot be divided for one table and not for
    another, so that plan is refused with a message instead of giving a wrong output."""
    from torchrec.distributed.types import ParameterSharding
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

    from mlet_dist.distributed.mean_pooling import divided_features

    configs = [
        EmbeddingBagConfig(name="a", num_embeddings=5, embedding_dim=4, feature_names=["f", "g"],
                           pooling=PoolingType.MEAN),
        EmbeddingBagConfig(name="b", num_embeddings=5, embedding_dim=4, feature_names=["f"]),
    ]
    shardings = {"a": ParameterSharding("row_wise", "fused"), "b": ParameterSharding("table_wise", "fused")}
    with pytest.raises(ValueError, match=r"features \['f'\] feed a row-wise/table-row-wise MEAN table"):
        divided_features(configs, shardings)
    shardings["a"] = ParameterSharding("table_wise", "fused")
    assert divided_features(configs, shardings) == {"MEAN": [], "SUM": ["f", "g", "f"]}


def test_diagnostics_from_reduced_grams_equal_the_gathered_tables(results: Dict[str, Any]) -> None:
    """--diagnostics no longer gathers whole tables: per-shard Gram matrices reduced across ranks
    (column-wise tables assembled chunk by chunk) give the same spectra (relative 1e-6)."""
    for per_rank in results["per_rank"]:
        g = per_rank["table_grams"]
        assert g["tables_mlet"] == g["tables_baseline"] == 7
        assert g["mlet"] < 1e-6 and g["baseline"] < 1e-6, g


def test_chunked_grams_equal_unchunked_products_of_the_gathered_tables(results: Dict[str, Any]) -> None:
    """The multi-chunk paths (tables are far below CHUNK_ROWS, so the run above has one chunk a
    table): with 5-row chunks the column-wise table is assembled in 6 chunks, the last partial,
    and every Gram equals TᵀT of the gathered table in one float64 product."""
    for per_rank in results["per_rank"]:
        g = per_rank["table_grams"]
        for kind in ("mlet", "baseline"):
            assert g[f"column_chunks_{kind}"] > 1, "the column-wise table fits one chunk: the path did not run"
            assert g[f"chunked_{kind}"] < 1e-12, g
