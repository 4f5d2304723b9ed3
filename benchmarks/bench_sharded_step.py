"""Step time of sharded embedding variants on N gloo ranks, measured side by side in one job.

    python benchmarks/bench_sharded_step.py            # launches itself under torchrun (2 ranks)

Variants (same tables, batches, DLRM dense part, fused rowwise Adagrad, table-wise sharding):
  mlet_owner   MLET k=64 -> d=16, projection on the owning rank (d-wide all-to-all)
  mlet_after   MLET k=64 -> d=16, projection as a dense DDP layer after the all-to-all (k-wide)
  ebc_d16      stock EmbeddingBagCollection, d=16
  ebc_d64      stock EmbeddingBagCollection, d=64
Variants are interleaved round by round so that machine noise hits all of them alike; the
median step time per variant and the ratios to ebc_d16 are printed by rank 0.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--tables", type=int, default=26)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=1024, help="per rank")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sharding", default="table_wise")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def launch(args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.ranks}",
           __file__, "--worker", *sys.argv[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONPATH=str(ROOT))
    raise SystemExit(subprocess.call(cmd, env=env))


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torchrec.datasets.utils import Batch
    from torchrec.models.dlrm import DLRMTrain
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from mlet_dist.distributed.env import init_distributed, shutdown_distributed
    from mlet_dist.distributed.sharding import ShardingConfig, shard_model
    from mlet_dist.log_setup import quiet_library_logs
    from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection
    from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer

    quiet_library_logs()
    env = init_distributed("gloo")
    tables = {f"C{i}": args.rows for i in range(args.tables)}
    variants = {
        "mlet_owner": (EmbeddingSpec(16, 64, mlet=True), True),
        "mlet_after": (EmbeddingSpec(16, 64, mlet=True), False),
        "ebc_d16": (EmbeddingSpec(16, 64, mlet=False), True),
        "ebc_d64": (EmbeddingSpec(64, 64, mlet=False), True),
    }
    models = {}
    for name, (spec, owner) in variants.items():
        torch.manual_seed(env.rank)
        collection = build_embedding_collection(tables, spec, device=torch.device("meta"))
        model = DLRMTrain(build_dlrm(collection, DLRMConfig(), dense_device=torch.device("meta")))
        optim = OptimConfig()
        attach_fused_embedding_optimizer(model, optim)
        sharded = shard_model(model, env, ShardingConfig(args.sharding, owner_projection=owner))
        models[name] = (sharded, build_optimizer(sharded, optim))

    g = torch.Generator().manual_seed(100 + env.rank)
    batches = []
    for _ in range(4):
        ids = torch.randint(0, args.rows, (args.tables * args.batch_size,), generator=g)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=list(tables), values=ids, lengths=torch.ones(args.tables * args.batch_size, dtype=torch.int32))
        batches.append(Batch(torch.rand(args.batch_size, 13, generator=g), kjt,
                             torch.randint(0, 2, (args.batch_size,), generator=g).float()))

    def step(name: str, i: int) -> None:
        model, opt = models[name]
        opt.zero_grad()
        loss, _ = model(batches[i % len(batches)])
        loss.backward()
        opt.step()

    for name in models:
        for i in range(args.warmup):
            step(name, i)
    times: Dict[str, List[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            dist.barrier()
            for i in range(args.steps):
                start = time.perf_counter()
                step(name, i)
                times[name].append(time.perf_counter() - start)
    if env.is_main:
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"\n{args.ranks} gloo ranks, {args.tables} tables x {args.rows} rows, batch {args.batch_size}/rank, "
              f"{args.sharding}, median of {args.rounds}x{args.steps} steps")
        print(f"{'variant':<12} {'ms/step':>9} {'vs ebc_d16':>11} {'vs ebc_d64':>11}")
        for name, ms in med.items():
            print(f"{name:<12} {ms:9.2f} {ms / med['ebc_d16']:10.2f}x {ms / med['ebc_d64']:10.2f}x")
        print(f"mlet_owner / mlet_after = {med['mlet_owner'] / med['mlet_after']:.2f}x")
    shutdown_distributed()


if __name__ == "__main__":
    arguments = parse()
    worker(arguments) if arguments.worker else launch(arguments)
