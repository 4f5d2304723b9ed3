"""One rank: an out-of-range id reaching the sharded kernels (Python checks off, as in training)
must raise, for the MLET and the baseline collection, table- and row-wise."""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402

from mlet_dist.distributed.env import init_distributed, shutdown_distributed  # noqa: E402
from mlet_dist.distributed.sharding import ShardingConfig, shard_model  # noqa: E402
from mlet_dist.log_setup import quiet_library_logs  # noqa: E402
from mlet_dist.models.embedding_tables import EmbeddingSpec, build_embedding_collection  # noqa: E402
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    quiet_library_logs()
    env = init_distributed("gloo")
    results = {}
    for mlet in (True, False):
        for sharding in ("table_wise", "row_wise"):
            spec = EmbeddingSpec(embedding_dim=4, inner_dim=8, mlet=mlet, validate_inputs=False)
            model = build_embedding_collection({"f0": 10, "f1": 20}, spec, device=torch.device("meta"))
            attach_fused_embedding_optimizer(model, OptimConfig("sgd", 0.1, "sgd", 0.1))
            sharded = shard_model(model, env, ShardingConfig(sharding))
            kjt = KeyedJaggedTensor.from_lengths_sync(
                keys=["f0", "f1"], values=torch.tensor([1, 12, 3, 4]), lengths=torch.tensor([1, 1, 1, 1]))
            key = f"{'mlet' if mlet else 'baseline'} {sharding}"
            try:
                sharded(kjt).values()  # a LazyAwaitable: force the lookup
                results[key] = "accepted"
            except RuntimeError as err:
                results[key] = str(err).splitlines()[0]
    args.out.write_text(json.dumps(results))
    shutdown_distributed()


if __name__ == "__main__":
    main()
