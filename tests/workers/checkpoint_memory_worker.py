"""One rank, run directly: RSS over a checkpoint save and load of a sharded MLET model whose
tables are a few hundred MB, printed as JSON (tests/test_checkpoint_memory.py)."""

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402

from rss_sampler import RssSampler  # noqa: E402
from mlet_dist.distributed.env import init_distributed, shutdown_distributed  # noqa: E402
from mlet_dist.distributed.sharding import ShardingConfig, shard_model  # noqa: E402
from mlet_dist.log_setup import quiet_library_logs  # noqa: E402
from mlet_dist.models.ranking import ModelConfig, model_factory  # noqa: E402
from mlet_dist.training.best_model import BestModelKeeper  # noqa: E402
from mlet_dist.training.checkpoint import CheckpointManager, TrainPosition, _init_lazy_optimizer_state  # noqa: E402
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer  # noqa: E402

TABLES = {f"C{i}": 300_000 for i in range(1, 5)}  # 4 x 300k rows x k=64 fp32 = 307 MB


def main() -> None:
    quiet_library_logs()
    env = init_distributed("gloo")
    cfg = ModelConfig()  # MLET k=64 -> d=16
    model = model_factory(cfg, TABLES, 13)(torch.device("meta"))
    attach_fused_embedding_optimizer(model, OptimConfig())
    sharded = shard_model(model, env, ShardingConfig(sharding="table_wise"))
    optimizer = build_optimizer(sharded, OptimConfig())
    _init_lazy_optimizer_state(optimizer)  # Adam's state, as after a first step
    table_bytes = sum(TABLES.values()) * cfg.embedding.inner_dim * 4
    with tempfile.TemporaryDirectory() as tmp, RssSampler() as rss:
        checkpoints = CheckpointManager(Path(tmp) / "checkpoints", env)
        stages = {}
        before = rss.reset()
        path = checkpoints.save(sharded, optimizer, TrainPosition(step=1, world_size=1))
        stages["checkpoint_save"] = rss.peak - before
        before = rss.reset()
        checkpoints.load(path, sharded, optimizer)
        stages["checkpoint_load"] = rss.peak - before
        before = rss.reset()
        BestModelKeeper(Path(tmp) / "best_model", env)._save(sharded, step=1)
        stages["best_model_save"] = rss.peak - before
    print(json.dumps({"table_bytes": table_bytes, "extra_bytes": stages}))
    shutdown_distributed()


if __name__ == "__main__":
    main()
