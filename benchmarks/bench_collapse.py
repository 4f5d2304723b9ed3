"""Collapse throughput: GB/s of k-wide table read, against a plain matmul and the memory bound.

    python benchmarks/bench_collapse.py                       # one process, this machine
    python benchmarks/bench_collapse.py --rows 8000000 --k 128 --d 16
    torchrun --nproc-per-node 2 benchmarks/bench_collapse.py --layout rw   # owner-side, 2 ranks
    torchrun --nproc-per-node 2 benchmarks/bench_collapse.py --layout cw   # column shards + reduce
    python benchmarks/bench_collapse.py --device cuda

What is timed (best of --repeats rounds, each running every method once, after a warm-up round),
on one n×k fp32 table T and a k×d W:

  copy      dst.copy_(T): reads and writes n·k·4 bytes. Its read+write rate is the memory
            bandwidth of this machine (all ranks copying at once, under torchrun).
  bound     the fastest a collapse can read T if it moved its bytes (read n·k, write n·d floats)
            at that bandwidth: bandwidth · k / (k + d).
  gemm      a square fp32 matmul (--gemm-size), all ranks at once: the machine's matmul FLOP/s.
            A collapse does 2·k·d FLOPs per 4·k bytes read, so it cannot read faster than
            2·FLOP/s / d: the compute roof. "roofline" = min(bound, compute roof); with d = 16 on
            a CPU the compute roof is usually the lower one.
  matmul    torch.matmul(T, W), output allocated: the same arithmetic with no chunking.
  chunked   mlet_dist.distributed.collapse.collapse_table (row chunks into a preallocated n×d).
  owner     mlet_dist.distributed.collapse.collapse_state_dict on a state dict holding T
            (a plain tensor in one process; row-wise or column-wise ShardedTensor under torchrun,
            where "cw" adds the reduce of the partial products between ranks).

All rates are GB/s of k-wide table read (n·k·4 bytes / time; summed over ranks, slowest rank's
time), printed with their ratio to matmul and to the bound.
"""

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import warnings  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed._shard.metadata import ShardMetadata  # noqa: E402
from torch.distributed._shard.sharded_tensor import (  # noqa: E402
    Shard,
    ShardedTensor,
    ShardedTensorMetadata,
    TensorProperties,
)

from mlet_dist.distributed.collapse import collapse_state_dict, collapse_table  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="rows of T per rank")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--chunk-rows", type=int, default=65536)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layout", choices=["rw", "cw"], default="rw", help="under torchrun: how T is sharded")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--gemm-size", type=int, default=None, help="square matmul for the FLOP/s roof (default 2048 cpu, 8192 cuda)"
    )
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _once(fn: Callable[[], object], device: torch.device) -> float:
    barrier()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    elapsed = time.perf_counter() - start
    if dist.is_initialized():  # the slowest rank's time
        t = torch.tensor([elapsed], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        elapsed = float(t[0])
    return elapsed


def timed_round_robin(fns: Dict[str, Callable[[], object]], device: torch.device, repeats: int) -> Dict[str, float]:
    """Best time of each, over ``repeats`` rounds that run every function once (after a warm-up
    round): a machine whose load changes affects all methods alike."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], _once(fn, device))
    return best


def total(x: int) -> int:
    if not dist.is_initialized():
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return int(t[0])


def sharded(
    local: torch.Tensor, offsets: List[Tuple[int, int]], size: Tuple[int, int], rank: int, device: torch.device
) -> ShardedTensor:
    """A ShardedTensor with one shard per rank at ``offsets[r]``, each of local.shape."""
    metas = [
        ShardMetadata(shard_offsets=list(off), shard_sizes=list(local.shape), placement=f"rank:{r}/{device}")
        for r, off in enumerate(offsets)
    ]
    md = ShardedTensorMetadata(
        shards_metadata=metas, size=torch.Size(size), tensor_properties=TensorProperties(dtype=local.dtype)
    )
    return ShardedTensor._init_from_local_shards_and_global_metadata([Shard(local, metas[rank])], md)


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # ShardedTensor's deprecation notice
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
        if args.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank = dist.get_rank() if launched else 0
    world = dist.get_world_size() if launched else 1
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    n, k, d = args.rows, args.k, args.d
    if args.layout == "cw" and k % world:
        raise SystemExit(f"--layout cw needs k divisible by the world size {world}")

    g = torch.Generator().manual_seed(1 + rank)
    local_cols = k // world if (launched and args.layout == "cw") else k
    table = torch.rand(n, local_cols, generator=g).to(device)
    proj = torch.randn(k, d, generator=torch.Generator().manual_seed(0)).to(device)
    local_proj = proj[rank * local_cols : (rank + 1) * local_cols] if local_cols != k else proj
    read_bytes = total(table.numel() * 4)

    if not launched:
        state: Dict[str, object] = {"t.wide.embedding_bags.x.weight": table, "t.projections.x.weight": proj}
    elif args.layout == "rw":
        state = {
            "t.wide.embedding_bags.x.weight": sharded(
                table, [(r * n, 0) for r in range(world)], (world * n, k), rank, device
            ),
            "t.projections.x.weight": proj,
        }
    else:
        state = {
            "t.wide.embedding_bags.x.weight": sharded(
                table, [(0, r * local_cols) for r in range(world)], (n, k), rank, device
            ),
            "t.projections.x.weight": sharded(
                local_proj.contiguous(), [(r * local_cols, 0) for r in range(world)], (k, d), rank, device
            ),
        }

    dst = torch.empty_like(table)
    out = torch.empty(n, d, device=device)
    m = args.gemm_size or (8192 if device.type == "cuda" else 2048)
    a, b = torch.rand(m, m, device=device), torch.rand(m, m, device=device)
    results = timed_round_robin(
        {
            "copy": lambda: dst.copy_(table),
            "gemm": lambda: torch.matmul(a, b),
            "matmul": lambda: torch.matmul(table, local_proj),
            "chunked": lambda: collapse_table(table, local_proj, args.chunk_rows, out=out),
            "owner": lambda: collapse_state_dict(state, chunk_rows=args.chunk_rows),  # type: ignore[arg-type]
        },
        device,
        args.repeats,
    )
    flops = total(2 * m**3) / results.pop("gemm")
    bandwidth = 2 * read_bytes / results["copy"]  # read + write
    bound = bandwidth * k / (k + d)
    compute_roof = 2 * flops / d
    roofline = min(bound, compute_roof)
    rate = {name: read_bytes / t for name, t in results.items() if name != "copy"}
    if rank == 0:
        layout = f", {args.layout} over {world} ranks" if launched else ""
        print(
            f"T: {n * (world if launched and args.layout == 'rw' else 1):,} x {k} fp32 ({read_bytes / 1e9:.2f} GB{layout}), "
            f"W: {k} x {d}, chunk {args.chunk_rows:,} rows, {device}, {torch.get_num_threads()} threads/rank"
        )
        print(
            f"memory bandwidth (copy, read+write): {bandwidth / 1e9:.2f} GB/s -> bound on collapse read "
            f"rate: {bound / 1e9:.2f} GB/s (x k/(k+d) = {k / (k + d):.2f})"
        )
        print(
            f"matmul FLOP/s ({m}^3 gemm): {flops / 1e9:.1f} GFLOP/s -> compute roof on collapse read rate: "
            f"{compute_roof / 1e9:.2f} GB/s; roofline {roofline / 1e9:.2f} GB/s"
        )
        print(f"{'method':<9} {'seconds':>9} {'GB/s read':>10} {'vs matmul':>10} {'vs bound':>9} {'vs roofline':>12}")
        for name, value in rate.items():
            print(
                f"{name:<9} {results[name]:>9.4f} {value / 1e9:>10.2f} {value / rate['matmul']:>10.2f} "
                f"{value / bound:>9.2f} {value / roofline:>12.2f}"
            )
    if launched:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
