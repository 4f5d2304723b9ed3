"""Sharded correctness checks on 2 gloo ranks against single-process references, one spawned
run (sharded_checks, every check below on each rank) shared by the tests of this file.

- ``mean_pooling``: a collection mixing row-wise / table-row-wise MEAN tables with table-wise,
  column-wise and data-parallel tables (SUM and MEAN), MLET and baseline, forward on each rank's
  slice vs the unsharded collection on the same rows: max |diff| per output key.
- ``grad_accumulation``: a replicated projection (row-wise sum, data-parallel average) after two
  micro-batch backwards vs the expected accumulated gradient.
- ``weights``: what the sharded MLET input_dist says to a KJT whose weights do not match the
  collection.
- ``injected``: an MLET sharder given a recording EBC sharder with its own fused params: whether
  that sharder built the k-wide tables and its bounds-check mode reached the fused kernels.

Tolerances: forward outputs within 1e-5 absolute of the unsharded collection, where the error
each test guards against is O(|output|) (an output divided by a bag length of 2-4); accumulated
gradients within 1e-5 of the expected sum, where reducing twice changes them by O(1).
"""

from typing import Any, Dict, List

import pytest
import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import ParameterConstraints
from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan, table_wise
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.sharded_mlet import MLETEmbeddingBagCollectionSharder
from mlet_dist.distributed.sharded_projection import ShardedProjection
from mlet_dist.distributed.sharding import ShardingConfig, shard_model
from mlet_dist.distributed.state import load_full_state_dict
from mlet_dist.log_setup import quiet_library_logs
from mlet_dist.modules.mlet_config import MLETTableConfig
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer
from multiprocess import run_ranks

TOL = 1e-5

# table -> (rows, sharding type, pooling); every RW/TWRW-vs-other combination the divisor touches.
MEAN_MIX = {
    "t_rw_mean": (40, "row_wise", PoolingType.MEAN),
    "t_twrw_mean": (30, "table_row_wise", PoolingType.MEAN),
    "t_rw_sum": (25, "row_wise", PoolingType.SUM),
    "t_tw_sum": (20, "table_wise", PoolingType.SUM),
    "t_tw_mean": (35, "table_wise", PoolingType.MEAN),
    "t_cw_mean": (28, "column_wise", PoolingType.MEAN),
    "t_dp_mean": (15, "data_parallel", PoolingType.MEAN),
}
K, D = 16, 8
LOCAL_BATCH = 6
SEED = 7


def mean_mix_model(device: torch.device, mlet: bool) -> nn.Module:
    if mlet:
        return MLETEmbeddingBagCollection(
            [
                MLETTableConfig(t, n, inner_dim=K, embedding_dim=D, feature_names=[f"f_{t}"], pooling=p)
                for t, (n, _, p) in MEAN_MIX.items()
            ],
            device=device,
        )
    return EmbeddingBagCollection(
        [
            EmbeddingBagConfig(name=t, num_embeddings=n, embedding_dim=D, feature_names=[f"f_{t}"], pooling=p)
            for t, (n, _, p) in MEAN_MIX.items()
        ],
        device=device,
    )


def mean_mix_constraints(mlet: bool) -> Dict[str, ParameterConstraints]:
    width = K if mlet else D
    return {
        t: ParameterConstraints(
            sharding_types=[kind],
            compute_kernels=["dense" if kind == "data_parallel" else "fused"],
            min_partition=width // 2 if kind == "column_wise" else None,  # two column shards
        )
        for t, (_, kind, _) in MEAN_MIX.items()
    }


def mean_mix_kjt(rank: int, world: int, weighted: bool = False) -> KeyedJaggedTensor:
    """Rows [rank*B, (rank+1)*B) of a fixed global batch; bags of 0-4 ids (lengths > 1 matter)."""
    g = torch.Generator().manual_seed(SEED)
    lengths = torch.randint(0, 5, (len(MEAN_MIX), world * LOCAL_BATCH), generator=g)
    values_per_feature = [
        torch.randint(0, n, (int(lengths[i].sum()),), generator=g) for i, (n, _, _) in enumerate(MEAN_MIX.values())
    ]
    lo, hi = rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH
    values, local_lengths = [], []
    for i, v in enumerate(values_per_feature):
        start = int(lengths[i, :lo].sum())
        stop = int(lengths[i, :hi].sum())
        values.append(v[start:stop])
        local_lengths.append(lengths[i, lo:hi])
    flat = torch.cat(values)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f_{t}" for t in MEAN_MIX],
        values=flat,
        lengths=torch.cat(local_lengths),
        weights=torch.rand(flat.numel(), generator=g) if weighted else None,
    )


def check_mean_pooling(env: DistEnv, mlet: bool) -> Dict[str, Any]:
    torch.manual_seed(SEED)
    reference = mean_mix_model(torch.device("cpu"), mlet)
    init = {k: v.clone() for k, v in reference.state_dict().items()}
    model = mean_mix_model(torch.device("meta"), mlet)
    attach_fused_embedding_optimizer(model, OptimConfig("sgd", 0.1, "sgd", 0.1), env.device.type)
    sharded = shard_model(model, env, ShardingConfig("auto"), mean_mix_constraints(mlet))
    load_full_state_dict(sharded, init)
    kjt = mean_mix_kjt(env.rank, env.world_size)
    with torch.no_grad():
        got = sharded(kjt)
        got = got.wait() if hasattr(got, "wait") else got
        want = reference(kjt)
    diffs = {key: (got[key] - want[key]).abs().max().item() for key in want.keys()}
    scale = {key: want[key].abs().max().item() for key in want.keys()}
    plan = sharded.plan.plan[""]  # the collection is the top-level module
    shards = {t: len(ps.sharding_spec.shards) if ps.sharding_spec is not None else 0 for t, ps in plan.items()}
    kinds = {t: ps.sharding_type for t, ps in plan.items()}
    return {"diff": diffs, "scale": scale, "sharding": kinds, "shards": shards}


def check_grad_accumulation(env: DistEnv, average: bool) -> Dict[str, Any]:
    """Two backwards into .grad on a replicated W; expected: sum over micro-batches of the
    group-summed (or averaged) gradients."""
    k, d, micro = 6, 3, 2
    proj = ShardedProjection(
        k, d, 0.1, torch.device("cpu"), env.rank, None, group=None, average_grads=average, source=torch.ones(k, d)
    )
    (param,) = list(proj.shards.values())

    def grad_of(rank: int, m: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(100 * rank + m)
        return torch.randn(4, k, generator=g), torch.randn(4, d, generator=g)

    for m in range(micro):
        x, c = grad_of(env.rank, m)
        ((x @ proj.local_slice(0, k)) * c).sum().backward()
    expected = sum(grad_of(r, m)[0].T @ grad_of(r, m)[1] for r in range(env.world_size) for m in range(micro))
    if average:
        expected = expected / env.world_size
    assert param.grad is not None
    return {"max_diff": (param.grad - expected).abs().max().item(), "scale": expected.abs().max().item()}


def check_weights(env: DistEnv) -> Dict[str, str]:
    """Sharded MLET collections refuse KJT weights that do not match ``is_weighted``."""
    out: Dict[str, str] = {}
    for weighted in (False, True):
        tables = [MLETTableConfig(f"t{i}", 20, inner_dim=K, embedding_dim=D, feature_names=[f"f{i}"]) for i in range(2)]
        model = MLETEmbeddingBagCollection(tables, is_weighted=weighted, device=torch.device("meta"))
        attach_fused_embedding_optimizer(model, OptimConfig("sgd", 0.1, "sgd", 0.1), env.device.type)
        sharded = shard_model(model, env, ShardingConfig("table_wise"))
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["f0", "f1"],
            values=torch.tensor([1, 2, 3]),
            lengths=torch.tensor([1, 2, 0, 0]),
            weights=None if weighted else torch.ones(3),
        )
        try:
            sharded(kjt)
            out[f"weighted={weighted}"] = "accepted"
        except ValueError as err:
            out[f"weighted={weighted}"] = str(err)
    return out


class RecordingEBCSharder(EmbeddingBagCollectionSharder):
    """TorchRec's EBC sharder, recording what it shards; IGNORE bounds checks mark its fused
    params (the project's own sharder uses FATAL, TorchRec's default is WARNING)."""

    def __init__(self) -> None:
        super().__init__(fused_params={"bounds_check_mode": BoundsCheckMode.IGNORE})
        self.sharded: List[str] = []

    def shard(self, module: Any, params: Any, env: Any, device: Any = None, module_fqn: Any = None) -> Any:
        self.sharded.append(f"{type(module).__name__} at {module_fqn}")
        return super().shard(module, params, env, device, module_fqn)


def check_injected_sharder(env: DistEnv) -> Dict[str, Any]:
    tables = [MLETTableConfig(f"t{i}", 20, inner_dim=K, embedding_dim=D, feature_names=[f"f{i}"]) for i in range(2)]
    model = MLETEmbeddingBagCollection(tables, device=torch.device("meta"))
    attach_fused_embedding_optimizer(model, OptimConfig("sgd", 0.1, "sgd", 0.1), env.device.type)
    ebc_sharder = RecordingEBCSharder()
    sharder = MLETEmbeddingBagCollectionSharder(ebc_sharder)
    module_plan = construct_module_sharding_plan(
        model,
        {"t0": table_wise(rank=0), "t1": column_wise(ranks=[0, 1])},
        sharder=sharder,
        local_size=env.world_size,
        world_size=env.world_size,
        device_type="cpu",
    )
    sharded = DistributedModelParallel(
        module=model, device=env.device, plan=ShardingPlan({"": module_plan}), sharders=[sharder]
    )  # type: ignore[list-item]
    wide = sharded.module.wide
    modes = sorted(
        {
            BoundsCheckMode(emb.emb_module.bounds_check_mode_int).name
            for lookup in wide._lookups
            for emb in lookup._emb_modules
        }
    )
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 2, 0, 0])
    )
    out = sharded(kjt)
    out = out.wait() if hasattr(out, "wait") else out
    return {
        "sharded": ebc_sharder.sharded,
        "modes": modes,
        "out_dims": out.length_per_key(),
        "fused_params": str(sharder.fused_params),
    }


SMALL_CHUNK_ROWS = 5  # below every table's rows (15-40) and no divisor of the column-wise one's (28)


def chunked_gram_check(sharded: nn.Module, full_state: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """table_grams with chunks of SMALL_CHUNK_ROWS rows (the column-wise path assembles several
    chunks, the last one partial) vs TᵀT of each gathered table in one product, no chunking."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    from mlet_dist.distributed.table_grams import _column_split, table_grams
    from mlet_dist.training.diagnostics import is_table_key

    chunked = table_grams(sharded, keep=is_table_key, chunk_rows=SMALL_CHUNK_ROWS)
    worst = 0.0
    for key, (gram, rows) in chunked.items():
        table = full_state[key].double()
        reference = table.T @ table
        assert rows == table.shape[0], (key, rows, table.shape)
        worst = max(worst, float((gram - reference).abs().max() / reference.abs().max()))
    column_rows = [
        t.size(0)
        for k, t in sharded.state_dict().items()
        if k in chunked and isinstance(t, ShardedTensor) and _column_split(t)
    ]
    return {"worst": worst, "column_chunks": min(column_rows, default=0) / SMALL_CHUNK_ROWS}


def check_table_grams(env: DistEnv) -> Dict[str, float]:
    """End-of-run diagnostics from reduced Gram matrices vs from the gathered full tables, on the
    7-table mixed plan (row-, table-row-, table-, column- (2 shards) wise and data-parallel); and
    the Grams themselves with small chunks vs unchunked products of the gathered tables."""
    from mlet_dist.distributed.state import gather_full_state_dict
    from mlet_dist.distributed.table_grams import table_grams
    from mlet_dist.training.diagnostics import (
        diagnostics_from_grams,
        diagnostics_from_state_dict,
        is_projection_key,
        is_table_key,
    )

    out: Dict[str, float] = {}
    for mlet in (True, False):
        torch.manual_seed(SEED + env.rank)
        model = mean_mix_model(torch.device("meta"), mlet)
        attach_fused_embedding_optimizer(model, OptimConfig("sgd", 0.1, "sgd", 0.1), env.device.type)
        sharded = shard_model(model, env, ShardingConfig("auto"), mean_mix_constraints(mlet))
        full_state = gather_full_state_dict(sharded)
        full = diagnostics_from_state_dict(full_state)
        grams = diagnostics_from_grams(
            table_grams(sharded, keep=is_table_key), gather_full_state_dict(sharded, keep=is_projection_key)
        )
        worst = 0.0
        for table, ref in full["tables"].items():
            for part in ("table", "wide", "projection"):
                if part in ref:
                    a = torch.tensor(ref[part]["singular_values"])
                    b = torch.tensor(grams["tables"][table][part]["singular_values"])
                    worst = max(worst, float(((a - b).abs() / a.abs().max()).max()))
        out["mlet" if mlet else "baseline"] = worst
        out[f"tables_{'mlet' if mlet else 'baseline'}"] = float(len(grams["tables"]))
        chunked = chunked_gram_check(sharded, full_state)
        out[f"chunked_{'mlet' if mlet else 'baseline'}"] = chunked["worst"]
        out[f"column_chunks_{'mlet' if mlet else 'baseline'}"] = chunked["column_chunks"]
    return out


def sharded_checks(env: DistEnv) -> Dict[str, Any]:
    """One rank's results of every check above (each rank returns its own)."""
    quiet_library_logs()
    return {
        "mean_pooling": {"mlet": check_mean_pooling(env, True), "baseline": check_mean_pooling(env, False)},
        "grad_accumulation": {
            "sum": check_grad_accumulation(env, False),
            "average": check_grad_accumulation(env, True),
        },
        "weights": check_weights(env),
        "injected": check_injected_sharder(env),
        "table_grams": check_table_grams(env),
    }


@pytest.fixture(scope="module")
def results() -> Dict[str, Any]:
    return {"per_rank": run_ranks(sharded_checks, world_size=2)}


@pytest.mark.parametrize("collection", ["mlet", "baseline"])
def test_mean_pooling_mixed_with_other_sharding_types(results: Dict[str, Any], collection: str) -> None:
    """RW/TWRW MEAN tables next to TW/CW/DP tables: every output equals the unsharded one
    (TorchRec 1.8 alone divides the TW/CW/DP outputs by their bag length here)."""
    for rank, per_rank in enumerate(results["per_rank"]):
        r = per_rank["mean_pooling"][collection]
        assert set(r["sharding"].values()) == {
            "row_wise",
            "table_row_wise",
            "table_wise",
            "column_wise",
            "data_parallel",
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
        EmbeddingBagConfig(
            name="a", num_embeddings=5, embedding_dim=4, feature_names=["f", "g"], pooling=PoolingType.MEAN
        ),
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
