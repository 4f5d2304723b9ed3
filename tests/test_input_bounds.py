"""Ids are checked without a host sync per step: the reader validates every row group, and the
sharded kernels run fbgemm's bounds check in FATAL mode (distributed/sharding.py). This guards the
second line: an id past its table that reaches the kernels raises instead of silently becoming
row 0 (fbgemm's default WARNING mode)."""

from typing import Dict

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.sharding import ShardingConfig, shard_model
from mlet_dist.log_setup import quiet_library_logs
from mlet_dist.models.embedding_tables import EmbeddingSpec, build_embedding_collection
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer
from multiprocess import run_ranks


def out_of_range_lookups(env: DistEnv) -> Dict[str, str]:
    """One rank, Python checks off (as in training): each collection's first error line, or 'accepted'."""
    quiet_library_logs()
    results = {}
    for mlet in (True, False):
        for sharding in ("table_wise", "row_wise"):
            spec = EmbeddingSpec(embedding_dim=4, inner_dim=8, mlet=mlet, validate_inputs=False)
            model = build_embedding_collection({"f0": 10, "f1": 20}, spec, device=torch.device("meta"))
            attach_fused_embedding_optimizer(model, OptimConfig("sgd", 0.1, "sgd", 0.1), env.device.type)
            sharded = shard_model(model, env, ShardingConfig(sharding))
            kjt = KeyedJaggedTensor.from_lengths_sync(
                keys=["f0", "f1"], values=torch.tensor([1, 12, 3, 4]), lengths=torch.tensor([1, 1, 1, 1])
            )
            key = f"{'mlet' if mlet else 'baseline'} {sharding}"
            try:
                sharded(kjt).values()  # a LazyAwaitable: force the lookup
                results[key] = "accepted"
            except RuntimeError as err:
                results[key] = str(err).splitlines()[0]
    return results


def test_out_of_range_id_in_the_sharded_kernel_raises() -> None:
    [results] = run_ranks(out_of_range_lookups, world_size=1)
    assert set(results) == {"mlet table_wise", "mlet row_wise", "baseline table_wise", "baseline row_wise"}
    for key, outcome in results.items():
        assert outcome != "accepted" and "idx < num_rows" in outcome, (key, outcome)
