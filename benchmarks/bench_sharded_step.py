"""Step time of sharded embedding variants on N gloo ranks, measured side by side in one job.

    python benchmarks/bench_sharded_step.py            # launches itself under torchrun (2 ranks)

Variants (same tables, batches, DLRM dense part, fused rowwise Adagrad, table-wise sharding; MLET
without the per-step Python input checks, as mlet-train runs it, unless --check-inputs):
  mlet_owner   MLET k=64 -> d=16, projection on the owning rank (d-wide all-to-all)
  mlet_after   MLET k=64 -> d=16, projection as a dense DDP layer after the all-to-all (k-wide)
  ebc_d16      stock EmbeddingBagCollection, d=16
  ebc_d64      stock EmbeddingBagCollection, d=64
Variants are interleaved round by round so that machine noise hits all of them alike; the
median step time per variant and the ratios to ebc_d16 are printed by rank 0.

``--cpu-table-updates jit,loop`` builds every variant once per fbgemm CPU table-update path
(mlet-train's --cpu-table-update; training/optim.py) and interleaves them all: ``mlet_owner`` is
the default JIT path, ``mlet_owner/loop`` the loop, and each /loop variant's ratio to its JIT
twin is printed. ``--ranks 1 --batch-size 128`` is the authors' configuration (one process).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


VARIANTS = ("mlet_owner", "mlet_after", "ebc_d16", "ebc_d64")


def add_setup_args(p: argparse.ArgumentParser, steps: int, steps_help: str) -> None:
    """The model, batch and round flags this benchmark shares with profile_step.py."""
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--tables", type=int, default=26)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=1024, help="per rank")
    p.add_argument("--steps", type=int, default=steps, help=steps_help)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sharding", default="table_wise")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_args(p, steps=20, steps_help="timed steps per variant per round")
    p.add_argument(
        "--check-inputs",
        action="store_true",
        help="MLET variants also run the per-step Python id checks (mlet-train's --check-inputs)",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {', '.join(VARIANTS)} (ebc_d16 always runs: the ratios' base)",
    )
    p.add_argument(
        "--cpu-table-updates",
        default="jit",
        help="comma-separated fbgemm CPU paths of the fused rowwise Adagrad to build each variant with "
        "(loop, jit); the first is the unsuffixed one",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def launch(args: argparse.Namespace, script: str = __file__) -> None:
    """Re-run ``script`` with --worker under torchrun, one process per rank."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.ranks}",
        script,
        "--worker",
        *sys.argv[1:],
    ]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONPATH=str(ROOT))
    raise SystemExit(subprocess.call(cmd, env=env))


def table_sizes(args: argparse.Namespace) -> Dict[str, int]:
    return {f"C{i}": args.rows for i in range(args.tables)}


def build_variant(name: str, args: argparse.Namespace, env: Any, cpu_table_update: str = "jit") -> Tuple[Any, Any]:
    """One sharded DLRMTrain and its dense optimizer, built as mlet-train builds them (fused
    rowwise Adagrad, bounds-checked kernels, no per-step Python input checks: training's default)."""
    import torch
    from torchrec.models.dlrm import DLRMTrain

    from mlet_dist.distributed.sharding import ShardingConfig, shard_model
    from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection
    from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer

    d, k, mlet, owner = {
        "mlet_owner": (16, 64, True, True),
        "mlet_after": (16, 64, True, False),
        "ebc_d16": (16, 64, False, True),
        "ebc_d64": (64, 64, False, True),
    }[name]
    spec = EmbeddingSpec(d, k, mlet=mlet, validate_inputs=args.check_inputs)
    torch.manual_seed(env.rank)
    collection = build_embedding_collection(table_sizes(args), spec, device=torch.device("meta"))
    model = DLRMTrain(build_dlrm(collection, DLRMConfig(), dense_device=torch.device("meta")))
    optim = OptimConfig(cpu_table_update=cpu_table_update)
    attach_fused_embedding_optimizer(model, optim, env.device.type)
    sharded = shard_model(model, env, ShardingConfig(args.sharding, owner_projection=owner))
    return sharded, build_optimizer(sharded, optim)


def make_batches(args: argparse.Namespace, rank: int, count: int = 4) -> List[Any]:
    """``count`` one-hot batches per rank (ids uniform over each table), cycled by the steps."""
    import torch
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(100 + rank)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, args.rows, (args.tables * args.batch_size,), generator=g)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=list(table_sizes(args)),
            values=ids,
            lengths=torch.ones(args.tables * args.batch_size, dtype=torch.int32),
        )
        batches.append(
            Batch(
                torch.rand(args.batch_size, 13, generator=g),
                kjt,
                torch.randint(0, 2, (args.batch_size,), generator=g).float(),
            )
        )
    return batches


def chosen_variants(args: argparse.Namespace) -> List[str]:
    """--variants in the canonical order, ebc_d16 added (every ratio is to it)."""
    asked = set(args.variants.split(",")) | {"ebc_d16"}
    unknown = sorted(asked - set(VARIANTS))
    if unknown:
        raise SystemExit(f"error: unknown --variants {unknown}; choose from {', '.join(VARIANTS)}")
    return [name for name in VARIANTS if name in asked]


def chosen_updates(args: argparse.Namespace) -> List[str]:
    """--cpu-table-updates, in order, each once."""
    from mlet_dist.training.optim import CPU_TABLE_UPDATES

    updates = list(dict.fromkeys(args.cpu_table_updates.split(",")))
    unknown = [u for u in updates if u not in CPU_TABLE_UPDATES]
    if unknown:
        raise SystemExit(f"error: unknown --cpu-table-updates {unknown}; choose from {', '.join(CPU_TABLE_UPDATES)}")
    return updates


def timed_builds(args: argparse.Namespace) -> List[Tuple[str, str, str]]:
    """(label, variant, table update) per timed model: the first update unsuffixed, others '/update'."""
    updates = chosen_updates(args)
    return [
        (name if update == updates[0] else f"{name}/{update}", name, update)
        for update in updates
        for name in chosen_variants(args)
    ]


def train_step(model: Any, opt: Any, batch: Any) -> None:
    """One plain training step (no pipeline): what both the bench and the profile time; the
    labelled phases let profile_step.py put Python time between ops somewhere."""
    from torch.profiler import record_function

    with record_function("step.zero_grad"):
        opt.zero_grad()
    with record_function("step.forward"):
        loss, _ = model(batch)
    with record_function("step.backward"):
        loss.backward()
    with record_function("step.optimizer"):
        opt.step()


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from mlet_dist.distributed.env import init_distributed, shutdown_distributed
    from mlet_dist.log_setup import quiet_library_logs

    quiet_library_logs()
    env = init_distributed("gloo")
    models = {label: build_variant(name, args, env, update) for label, name, update in timed_builds(args)}
    batches = make_batches(args, env.rank)

    def step(name: str, i: int) -> None:
        train_step(*models[name], batches[i % len(batches)])

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
        print(
            f"\n{args.ranks} gloo ranks, {args.tables} tables x {args.rows} rows, batch {args.batch_size}/rank, "
            f"{args.sharding}, median of {args.rounds}x{args.steps} steps, load average {os.getloadavg()[0]:.1f}"
        )
        print(f"{'variant':<16} {'ms/step':>9} {'vs ebc_d16':>11}")
        for name, ms in med.items():
            print(f"{name:<16} {ms:9.2f} {ms / med['ebc_d16']:10.2f}x")
        if {"mlet_owner", "mlet_after"} <= set(med):
            print(f"mlet_owner / mlet_after = {med['mlet_owner'] / med['mlet_after']:.2f}x")
        for label, name, _ in timed_builds(args):
            if label != name:
                print(f"{label} / {name} = {med[label] / med[name]:.3f}x")
    shutdown_distributed()


if __name__ == "__main__":
    arguments = parse()
    chosen_variants(arguments)
    chosen_updates(arguments)
    worker(arguments) if arguments.worker else launch(arguments)
