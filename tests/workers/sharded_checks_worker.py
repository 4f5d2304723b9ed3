"""Run under torchrun (2 gloo ranks): small sharded correctness checks in one launch.

- ``mean_pooling``: a collection mixing row-wise / table-row-wise MEAN tables with table-wise,
  column-wise and data-parallel tables (SUM and MEAN), MLET and baseline, forward on each rank's
  slice vs the unsharded collection on the same rows: max |diff| per output key.
- ``grad_accumulation``: a replicated projection (row-wise sum, data-parallel average) after two
  micro-batch backwards vs the expected accumulated gradient.
- ``weights``: what the sharded MLET input_dist says to a KJT whose weights do not match the
  collection.
- ``injected``: an MLET sharder given a recording EBC sharder with its own fused params: whether
  that sharder built the k-wide tables and its bounds-check mode reached the fused kernels.

Rank 0 writes a dict of results to --out (torch.save).
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode  # noqa: E402
from torch import nn  # noqa: E402
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder  # noqa: E402
from torchrec.distributed.model_parallel import DistributedModelParallel  # noqa: E402
from torchrec.distributed.planner import ParameterConstraints  # noqa: E402
from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan, table_wise  # noqa: E402
from torchrec.distributed.types import ShardingPlan  # noqa: E402
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType  # noqa: E402
from torchrec.modules.embedding_modules import EmbeddingBagCollection  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402

from mlet_dist.distributed.env import init_distributed, shutdown_distributed  # noqa: E402
from mlet_dist.distributed.sharded_mlet import MLETEmbeddingBagCollectionSharder  # noqa: E402
from mlet_dist.distributed.sharded_projection import ShardedProjection  # noqa: E402
from mlet_dist.distributed.sharding import ShardingConfig, shard_model  # noqa: E402
from mlet_dist.distributed.state import load_full_state_dict  # noqa: E402
from mlet_dist.log_setup import quiet_library_logs  # noqa: E402
from mlet_dist.modules.mlet_config import MLETTableConfig  # noqa: E402
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection  # noqa: E402
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer  # noqa: E402

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
            [MLETTableConfig(t, n, inner_dim=K, embedding_dim=D, feature_names=[f"f_{t}"], pooling=p)
             for t, (n, _, p) in MEAN_MIX.items()],
            device=device,
        )
    return EmbeddingBagCollection(
        [EmbeddingBagConfig(name=t, num_embeddings=n, embedding_dim=D, feature_names=[f"f_{t}"], pooling=p)
         for t, (n, _, p) in MEAN_MIX.items()],
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
        keys=[f"f_{t}" for t in MEAN_MIX], values=flat, lengths=torch.cat(local_lengths),
        weights=torch.rand(flat.numel(), generator=g) if weighted else None,
    )


def check_mean_pooling(env: Any, mlet: bool) -> Dict[str, Any]:
    torch.manual_seed(SEED)
    reference = mean_mix_model(torch.device("cpu"), mlet)
    init = {k: v.clone() for k, v in reference.state_dict().items()}
    model = mean_mix_model(torch.device("meta"), mlet)
    attach_fused_embedding_optimizer(model, OptimConfig("sgd", 0.1, "sgd", 0.1))
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


def check_grad_accumulation(env: Any, average: bool) -> Dict[str, Any]:
    """Two backwards into .grad on a replicated W; expected: sum over micro-batches of the
    group-summed (or averaged) gradients."""
    k, d, micro = 6, 3, 2
    proj = ShardedProjection(k, d, 0.1, torch.device("cpu"), env.rank, None, group=None,
                             average_grads=average, source=torch.ones(k, d))
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


def check_weights(env: Any) -> Dict[str, str]:
    """Sharded MLET collections refuse KJT weights that do not match ``is_weighted``."""
    out: Dict[str, str] = {}
    for weighted in (False, True):
        tables = [MLETTableConfig(f"t{i}", 20, inner_dim=K, embedding_dim=D, feature_names=[f"f{i}"]) for i in range(2)]
        model = MLETEmbeddingBagCollection(tables, is_weighted=weighted, device=torch.device("meta"))
        attach_fused_embedding_optimizer(model, OptimConfig("sgd", 0.1, "sgd", 0.1))
        sharded = shard_model(model, env, ShardingConfig("table_wise"))
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["f0", "f1"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 2, 0, 0]),
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


def check_injected_sharder(env: Any) -> Dict[str, Any]:
    tables = [MLETTableConfig(f"t{i}", 20, inner_dim=K, embedding_dim=D, feature_names=[f"f{i}"]) for i in range(2)]
    model = MLETEmbeddingBagCollection(tables, device=torch.device("meta"))
    attach_fused_embedding_optimizer(model, OptimConfig("sgd", 0.1, "sgd", 0.1))
    ebc_sharder = RecordingEBCSharder()
    sharder = MLETEmbeddingBagCollectionSharder(ebc_sharder)
    module_plan = construct_module_sharding_plan(
        model, {"t0": table_wise(rank=0), "t1": column_wise(ranks=[0, 1])}, sharder=sharder,
        local_size=env.world_size, world_size=env.world_size, device_type="cpu",
    )
    sharded = DistributedModelParallel(module=model, device=env.device, plan=ShardingPlan({"": module_plan}),
                                       sharders=[sharder])  # type: ignore[list-item]
    wide = sharded.module.wide
    modes = sorted({
        BoundsCheckMode(emb.emb_module.bounds_check_mode_int).name
        for lookup in wide._lookups for emb in lookup._emb_modules
    })
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 2, 0, 0]))
    out = sharded(kjt)
    out = out.wait() if hasattr(out, "wait") else out
    return {"sharded": ebc_sharder.sharded, "modes": modes, "out_dims": out.length_per_key(),
            "fused_params": str(sharder.fused_params)}


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
    column_rows = [t.size(0) for k, t in sharded.state_dict().items()
                   if k in chunked and isinstance(t, ShardedTensor) and _column_split(t)]
    return {"worst": worst, "column_chunks": min(column_rows, default=0) / SMALL_CHUNK_ROWS}


def check_table_grams(env: Any) -> Dict[str, float]:
    """End-of-run diagnostics from reduced Gram matrices vs from the gathered full tables, on the
    7-table mixed plan (row-, table-row-, table-, column- (2 shards) wise and data-parallel); and
    the Grams themselves with small chunks vs unchunked products of the gathered tables."""
    from mlet_dist.distributed.state import gather_full_state_dict
    from mlet_dist.distributed.table_grams import table_grams
    from mlet_dist.training.diagnostics import (
        diagnostics_from_grams, diagnostics_from_state_dict, is_projection_key, is_table_key)

    out: Dict[str, float] = {}
    for mlet in (True, False):
        torch.manual_seed(SEED + env.rank)
        model = mean_mix_model(torch.device("meta"), mlet)
        attach_fused_embedding_optimizer(model, OptimConfig("sgd", 0.1, "sgd", 0.1))
        sharded = shard_model(model, env, ShardingConfig("auto"), mean_mix_constraints(mlet))
        full_state = gather_full_state_dict(sharded)
        full = diagnostics_from_state_dict(full_state)
        grams = diagnostics_from_grams(table_grams(sharded, keep=is_table_key),
                                       gather_full_state_dict(sharded, keep=is_projection_key))
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    quiet_library_logs()
    env = init_distributed("gloo")
    results: Dict[str, Any] = {
        "mean_pooling": {"mlet": check_mean_pooling(env, True), "baseline": check_mean_pooling(env, False)},
        "grad_accumulation": {"sum": check_grad_accumulation(env, False),
                              "average": check_grad_accumulation(env, True)},
        "weights": check_weights(env),
        "injected": check_injected_sharder(env),
        "table_grams": check_table_grams(env),
    }
    gathered: List[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, results)
    if env.is_main:
        torch.save({"per_rank": gathered}, args.out)
    shutdown_distributed()


if __name__ == "__main__":
    main()
