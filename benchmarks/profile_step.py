"""Where one MLET step's extra time goes, op by op, against one stock d=16 step.

    python benchmarks/profile_step.py                       # 2 gloo ranks, rank 0 profiled
    python benchmarks/profile_step.py --out benchmarks/profiles/step_profile.md

Same models, batches and step as bench_sharded_step.py (its build_variant / make_batches /
train_step). After warm-up, torch.profiler (CPU) records ``--steps`` steps of each variant,
interleaved over ``--rounds`` rounds so that machine noise hits both alike; rank 0's self CPU time
per op (and per record_function region: a region's self time is the Python between its ops) is
taken per step, and the table shows each op's median over the steps (robust to bursts of load
from elsewhere; the medians need not add up to the median step). Unprofiled medians of the same steps are measured in
the same run, since the profiler adds its own overhead per op.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sharded_step as bench  # noqa: E402

PROFILED = ("mlet_owner", "ebc_d16")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_setup_args(p, steps=10, steps_help="profiled steps per variant per round")
    p.add_argument("--check-inputs", action="store_true", help="MLET with the per-step Python id checks")
    p.add_argument("--top", type=int, default=30, help="rows of the table (largest |difference| first)")
    p.add_argument("--out", type=Path, help="write the markdown table here (rank 0); stdout otherwise")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def self_ms_by_op(prof: Any) -> Dict[str, float]:
    """Self CPU ms per op (or region) name over one profiled window."""
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def profiled_steps(model: Any, opt: Any, batches: List[Any], steps: int) -> Tuple[List[Dict[str, float]], List[float]]:
    """Per step: self ms per op, and the profiled wall ms. One profiler window per step, so that
    a burst of load from elsewhere spoils one sample that the median then ignores."""
    from torch.profiler import ProfilerActivity, profile

    ops, walls = [], []
    for i in range(steps):
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            bench.train_step(model, opt, batches[i % len(batches)])
        walls.append((time.perf_counter() - start) * 1e3)
        ops.append(self_ms_by_op(prof))
    return ops, walls


def median_per_op(samples: List[Dict[str, float]]) -> Dict[str, float]:
    """Median over steps of each op's self ms (0 in a step where it did not run)."""
    names = {op for sample in samples for op in sample}
    return {op: statistics.median(sample.get(op, 0.0) for sample in samples) for op in names}


def timed_steps(model: Any, opt: Any, batches: List[Any], steps: int) -> List[float]:
    """Unprofiled step times (ms)."""
    out = []
    for i in range(steps):
        start = time.perf_counter()
        bench.train_step(model, opt, batches[i % len(batches)])
        out.append((time.perf_counter() - start) * 1e3)
    return out


def markdown(args: argparse.Namespace, per_step: Dict[str, Dict[str, float]],
             profiled_wall: Dict[str, float], plain: Dict[str, float], load: Tuple[float, float]) -> str:
    """The committed table: rows by |MLET - stock| descending, then totals."""
    a, b = PROFILED
    ops = set(per_step[a]) | set(per_step[b])
    diff = {op: per_step[a].get(op, 0.0) - per_step[b].get(op, 0.0) for op in ops}
    ranked = sorted(ops, key=lambda op: -abs(diff[op]))
    shown, rest = ranked[: args.top], ranked[args.top:]
    lines = [
        f"# One MLET step vs one stock d=16 step, op by op (rank 0 of {args.ranks} gloo ranks)",
        "",
        f"`python benchmarks/profile_step.py --ranks {args.ranks} --tables {args.tables} --rows {args.rows} "
        f"--batch-size {args.batch_size} --steps {args.steps} --rounds {args.rounds}"
        f"{' --check-inputs' if args.check_inputs else ''}`: {args.tables} tables x {args.rows} rows, "
        f"batch {args.batch_size}/rank, {args.sharding}, fused rowwise Adagrad, DLRM dense part; "
        f"MLET k=64 -> d=16 projected on the owning rank; torch.profiler (CPU) over "
        f"{args.rounds}x{args.steps} interleaved steps per variant after {args.warmup} warm-up steps.",
        "",
        f"Load average {load[0]:.1f} at the start, {load[1]:.1f} at the end, on a 2-core box shared with other "
        "engineers' work: absolute ms are inflated and noisy, the op *shares* and the differences are the "
        "informative part. A region (`step.*`, `mlet.*`, TorchRec's `## ... ##`) counts only its own Python "
        "time between the ops it encloses.",
        "",
        f"| step wall, ms | {a} | {b} | ratio |",
        "|---|---:|---:|---:|",
        f"| unprofiled median | {plain[a]:.2f} | {plain[b]:.2f} | {plain[a] / plain[b]:.2f}x |",
        f"| profiled median | {profiled_wall[a]:.2f} | {profiled_wall[b]:.2f} | "
        f"{profiled_wall[a] / profiled_wall[b]:.2f}x |",
        "",
        f"| op / region | {a} self ms/step | {b} self ms/step | difference |",
        "|---|---:|---:|---:|",
    ]
    for op in shown:
        lines.append(f"| `{op}` | {per_step[a].get(op, 0.0):.3f} | {per_step[b].get(op, 0.0):.3f} | {diff[op]:+.3f} |")
    rest_a = sum(per_step[a].get(op, 0.0) for op in rest)
    rest_b = sum(per_step[b].get(op, 0.0) for op in rest)
    lines.append(f"| {len(rest)} other ops | {rest_a:.3f} | {rest_b:.3f} | {rest_a - rest_b:+.3f} |")
    tot_a, tot_b = sum(per_step[a].values()), sum(per_step[b].values())
    lines.append(f"| **sum of the medians** | {tot_a:.3f} | {tot_b:.3f} | {tot_a - tot_b:+.3f} |")
    return "\n".join(lines) + "\n"


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from mlet_dist.distributed.env import init_distributed, shutdown_distributed
    from mlet_dist.log_setup import quiet_library_logs

    quiet_library_logs()
    env = init_distributed("gloo")
    load_start = os.getloadavg()[0]
    models = {name: bench.build_variant(name, args, env) for name in PROFILED}
    batches = bench.make_batches(args, env.rank)
    for name in PROFILED:
        timed_steps(*models[name], batches, args.warmup)
    samples: Dict[str, List[Dict[str, float]]] = {name: [] for name in PROFILED}
    walls: Dict[str, List[float]] = {name: [] for name in PROFILED}
    plain: Dict[str, List[float]] = {name: [] for name in PROFILED}
    for _ in range(args.rounds):
        for name in PROFILED:
            dist.barrier()
            plain[name] += timed_steps(*models[name], batches, args.steps)
            dist.barrier()
            ops, wall = profiled_steps(*models[name], batches, args.steps)
            samples[name] += ops
            walls[name] += wall
    if env.is_main:
        per_step = {name: median_per_op(samples[name]) for name in PROFILED}
        text = markdown(args, per_step, {k: statistics.median(v) for k, v in walls.items()},
                        {k: statistics.median(v) for k, v in plain.items()}, (load_start, os.getloadavg()[0]))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
            print(f"wrote {args.out}")
        else:
            print(text)
    shutdown_distributed()


if __name__ == "__main__":
    arguments = parse()
    worker(arguments) if arguments.worker else bench.launch(arguments, __file__)
