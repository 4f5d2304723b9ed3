"""Peak RSS over the checkpoint stages of one rank: sync save, async save, and a load into the
existing model (issue 26: no stage may hold two copies of the model in RAM).

    python benchmarks/bench_checkpoint_memory.py                          # 4 x 1.5M rows x k=64: 1.5 GB
    python benchmarks/bench_checkpoint_memory.py --rows 300000 --stages sync_save load

Run directly (one gloo rank of its own). Prints one JSON line: the table bytes, and per stage the
RSS growth above the RSS before it (``extra_bytes``), its ratio to the table bytes and its seconds.
A stage that holds a second copy of the tables shows an extra of about 1.0; one table at a time
about 1/--tables.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from rss_sampler import RssSampler  # noqa: E402
from mlet_dist.distributed.env import DistEnv, init_distributed, shutdown_distributed  # noqa: E402
from mlet_dist.distributed.sharding import ShardingConfig, shard_model  # noqa: E402
from mlet_dist.log_setup import quiet_library_logs  # noqa: E402
from mlet_dist.models.ranking import ModelConfig, model_factory  # noqa: E402
from mlet_dist.training.checkpoint import CheckpointManager, TrainPosition, _init_lazy_optimizer_state  # noqa: E402
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer  # noqa: E402

STAGES = ("sync_save", "async_save", "load")


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", type=int, default=4)
    p.add_argument("--rows", type=int, default=1_500_000, help="rows per table (k=64 fp32: 256 B a row)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir, removed)")
    return p.parse_args(argv)


def build(env: DistEnv, tables: Dict[str, int]) -> tuple:
    """A table-wise sharded MLET k=64 -> d=16 model and its optimizers, state created as after a step."""
    model = model_factory(ModelConfig(), tables, 13)(torch.device("meta"))
    attach_fused_embedding_optimizer(model, OptimConfig(), env.device.type)
    sharded = shard_model(model, env, ShardingConfig(sharding="table_wise"))
    optimizer = build_optimizer(sharded, OptimConfig())
    _init_lazy_optimizer_state(optimizer)
    return sharded, optimizer


def measure(rss: RssSampler, run: Callable[[], object]) -> Dict[str, float]:
    """RSS growth over ``run`` above the RSS just before it, and its wall seconds."""
    before, start = rss.reset(), time.perf_counter()
    run()
    return {"extra_bytes": rss.peak - before, "seconds": round(time.perf_counter() - start, 2)}


def run_stages(root: Path, env: DistEnv, model: nn.Module, optimizer, stages: List[str]) -> Dict[str, dict]:
    """Each stage in order; ``load`` reads the last checkpoint saved (a sync one if none was)."""
    sync, results, saved = CheckpointManager(root / "sync", env, keep=1), {}, None
    with RssSampler() as rss:
        for step, stage in enumerate(stages, start=1):
            if stage == "sync_save":
                results[stage] = measure(rss, lambda: sync.save(model, optimizer, TrainPosition(step=step)))
                saved = sync.latest()
            elif stage == "async_save":
                manager = CheckpointManager(root / "async", env, keep=1, mode="async")
                results[stage] = measure(
                    rss, lambda: (manager.save(model, optimizer, TrainPosition(step=step)), manager.finish_pending())
                )
                saved = manager.latest()
            else:
                if saved is None:
                    saved = sync.save(model, optimizer, TrainPosition(step=step))
                results[stage] = measure(rss, lambda: sync.load(saved, model, optimizer))
    return results


def main(argv: List[str]) -> None:
    args = parse(argv)
    quiet_library_logs()
    env = init_distributed("gloo")
    tables = {f"C{i}": args.rows for i in range(1, args.tables + 1)}
    table_bytes = sum(tables.values()) * ModelConfig().embedding.inner_dim * 4
    model, optimizer = build(env, tables)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        results = run_stages(Path(tmp), env, model, optimizer, args.stages)
    for stage in results.values():
        stage["extra_over_tables"] = round(stage["extra_bytes"] / table_bytes, 3)
    print(json.dumps({"table_bytes": table_bytes, "tables": args.tables, "stages": results}))
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
