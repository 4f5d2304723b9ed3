"""Where one MLET step's extra time goes, op by op, against one stock d=16 step.

    python benchmarks/profile_step.py                       # 2 gloo ranks, rank 0 profiled
    python benchmarks/profile_step.py --out benchmarks/profiles/step_profile.md
    python benchmarks/profile_step.py --ranks 1 --batch-size 128 --train-data DIR   # mlet-train's own step

With ``--train-data`` it profiles mlet-train itself (train.py's ``run``: the parquet reader,
TrainPipelineSparseDist, the Trainer's per-step bookkeeping) at the authors' configuration
(MLET k=64 -> d=16, one epoch) and breaks each step into stages (``breakdown_markdown``); one run
per ``--train-variant`` (``default``: mlet-train's optimizers; ``matched``: SGD at lr 0.2 for tables
and dense, as the authors' dlrm_mlet trains), each once unprofiled and once profiled.

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
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sharded_step as bench  # noqa: E402

PROFILED = ("mlet_owner", "ebc_d16")
# mlet-train's flags per --train-variant, after the authors' configuration (pair.sh's)
TRAIN_VARIANTS: Dict[str, List[str]] = {
    "default": [],
    "matched": [
        "--embedding-optimizer",
        "sgd",
        "--embedding-lr",
        "0.2",
        "--dense-optimizer",
        "sgd",
        "--dense-lr",
        "0.2",
    ],
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_setup_args(p, steps=10, steps_help="profiled steps per variant per round")
    p.add_argument("--check-inputs", action="store_true", help="MLET with the per-step Python id checks")
    p.add_argument("--top", type=int, default=30, help="rows of the table (largest |difference| first)")
    p.add_argument("--out", type=Path, help="write the markdown table here (rank 0); stdout otherwise")
    p.add_argument("--train-data", type=Path, help="profile mlet-train's own steps on this prepared dataset")
    p.add_argument("--train-variant", default="default,matched", help=f"with --train-data: {', '.join(TRAIN_VARIANTS)}")
    p.add_argument("--skip-steps", type=int, default=5, help="with --train-data: first steps left out (warm-up)")
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


def markdown(
    args: argparse.Namespace,
    per_step: Dict[str, Dict[str, float]],
    profiled_wall: Dict[str, float],
    plain: Dict[str, float],
    load: Tuple[float, float],
) -> str:
    """The committed table: rows by |MLET - stock| descending, then totals."""
    a, b = PROFILED
    ops = set(per_step[a]) | set(per_step[b])
    diff = {op: per_step[a].get(op, 0.0) - per_step[b].get(op, 0.0) for op in ops}
    ranked = sorted(ops, key=lambda op: -abs(diff[op]))
    shown, rest = ranked[: args.top], ranked[args.top :]
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
        text = markdown(
            args,
            per_step,
            {k: statistics.median(v) for k, v in walls.items()},
            {k: statistics.median(v) for k, v in plain.items()},
            (load_start, os.getloadavg()[0]),
        )
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
            print(f"wrote {args.out}")
        else:
            print(text)
    shutdown_distributed()


# --- mlet-train's own step, stage by stage (--train-data) ------------------------------------------

# Stages of one TorchRec pipeline step, as (row, the record_function labels it sums: inclusive ms).
# Top-level stages partition the step's main-thread time; the rest is Python/framework glue.
TOP_STAGES: List[Tuple[str, Tuple[str, ...]]] = [
    ("input: next batch from the reader's prefetch queue", ("## next_batch ##",)),
    ("input: pipeline copy (Batch.to)", ("## copy_batch_to_gpu ##",)),
    ("sparse dist: input all-to-all (start + wait)", ("## start_sparse_data_dist ##", "## wait_sparse_data_dist ##")),
    ("zero_grad", ("## zero_grad ##",)),
    ("forward (all of it)", ("## forward ##",)),
    ("backward (all of it)", ("## backward ##",)),
    ("dense optimizer step", ("## optimizer ##",)),
    ("trainer bookkeeping (lr, loss tally, log)", ("trainer.after_step",)),
]
# Parts of forward/backward, each also counted in its top-level stage. (The reader's own thread,
# parquet -> Batch, is not in the main thread's profile: its cost to the step is "next batch".)
INNER_STAGES: List[Tuple[str, Tuple[str, ...]]] = [
    ("  forward: MLET lookup (fbgemm forward)", ("mlet.lookup",)),
    ("  forward: MLET projection", ("mlet.project",)),
    ("  backward: fused table update (fbgemm rowwise Adagrad / SGD)", ("fbgemm::split_embedding_backward_codegen",)),
    ("  backward: projection", ("TiledProjectionBackward",)),
    ("  backward: DDP gradient reducer (1 rank)", ("torch::distributed::reducer", "c10d::allreduce_")),
]


def stage_key(name: str) -> str:
    """A record_function name without TorchRec's per-batch index ("## forward 12 ##" -> "## forward ##")."""
    return re.sub(r" \d+ ##$", " ##", name)


def inclusive_ms(prof: Any) -> Dict[str, float]:
    """Inclusive CPU ms per (index-free) event name over one profiled window."""
    out: Dict[str, float] = {}
    for e in prof.key_averages():
        key = stage_key(e.key)
        out[key] = out.get(key, 0.0) + e.cpu_time_total / 1e3
    return out


def stage_ms(ops: Dict[str, float], labels: Tuple[str, ...]) -> float:
    """Sum of the ops whose name is or starts with one of ``labels``."""
    return sum(ms for op, ms in ops.items() if any(op == lab or op.startswith(lab) for lab in labels))


class StepWindows:
    """Per-step wall ms (and, when profiling, per-step inclusive ms by op), one window from the end
    of one step's bookkeeping to the end of the next: everything the step costs the main thread."""

    def __init__(self, profiled: bool, skip: int) -> None:
        self.profiled, self.skip = profiled, skip
        self.walls: List[float] = []
        self.ops: List[Dict[str, float]] = []
        self._prof: Any = None
        self._start: Optional[float] = None
        self._steps = 0

    def step_done(self) -> None:
        now = time.perf_counter()
        if self._start is not None:
            self.walls.append((now - self._start) * 1e3)
            if self._prof is not None:
                self._prof.__exit__(None, None, None)
                self.ops.append(inclusive_ms(self._prof))
                self._prof = None
        self._steps += 1
        self._start = None
        if self._steps >= self.skip:
            if self.profiled:
                from torch.profiler import ProfilerActivity, profile

                self._prof = profile(activities=[ProfilerActivity.CPU])
                self._prof.__enter__()
            self._start = time.perf_counter()

    def close(self) -> None:
        """The window open after the last step covered the evaluation: dropped."""
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self._prof = None


def labelled(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    """``fn`` inside a record_function region named ``label``."""
    from torch.profiler import record_function

    def wrapper(*a: Any, **kw: Any) -> Any:
        with record_function(label):
            return fn(*a, **kw)

    return wrapper


def run_train_variant(args: argparse.Namespace, variant: str, env: Any, profiled: bool) -> StepWindows:
    """One mlet-train run (train.py's ``run``) with the step windows hooked in; the hooks only
    label and time, they change no computation."""
    from mlet_dist import train
    from mlet_dist.training.config import parse_args
    from mlet_dist.training.trainer import Trainer

    windows = StepWindows(profiled, args.skip_steps)
    after_step = Trainer._after_step

    def timed_after_step(self: Any, *a: Any) -> None:
        labelled(after_step, "trainer.after_step")(self, *a)
        windows.step_done()

    Trainer._after_step = timed_after_step  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            argv = [
                "--data",
                str(args.train_data),
                "--run-dir",
                run_dir,
                "--no-resume",
                "--model",
                "mlet",
                "--inner-dim",
                "64",
                "--embedding-dim",
                "16",
                "--epochs",
                "1",
                "--batch-size",
                str(args.batch_size),
                "--no-progress",
                "--no-collapse",
                *TRAIN_VARIANTS[variant],
            ]
            train.run(parse_args(argv), env)
    finally:
        Trainer._after_step = after_step  # type: ignore[method-assign]
        windows.close()
    return windows


def breakdown_rows(ops: List[Dict[str, float]], walls: List[float]) -> List[Tuple[str, float]]:
    """(row, median ms/step): the stages, the glue (profiled step wall - the top-level stages,
    per step) and the profiled wall."""

    def median_of(labels: Tuple[str, ...]) -> float:
        return statistics.median(stage_ms(o, labels) for o in ops)

    rows = [(name, median_of(labels)) for name, labels in TOP_STAGES + INNER_STAGES]
    glue = [w - sum(stage_ms(o, labels) for _, labels in TOP_STAGES) for o, w in zip(ops, walls)]
    rows.append(("Python/framework glue (step wall - top-level stages)", statistics.median(glue)))
    rows.append(("**profiled step wall**", statistics.median(walls)))
    return rows


def breakdown_markdown(
    args: argparse.Namespace, results: Dict[str, Tuple[StepWindows, StepWindows]], load: Tuple[float, float]
) -> str:
    """The committed table: one column per variant, median ms/step per stage."""
    variants = list(results)
    rows = {v: breakdown_rows(prof.ops, prof.walls) for v, (_, prof) in results.items()}
    lines = [
        f"`python benchmarks/profile_step.py --ranks 1 --batch-size {args.batch_size} --train-data DATA "
        f"--train-variant {','.join(variants)}` (mlet-train's own run: MLET k=64 -> d=16, one epoch, "
        f"TrainPipelineSparseDist, {os.environ.get('OMP_NUM_THREADS', '?')} threads; steps after the first "
        f"{args.skip_steps}; median over steps). Load average {load[0]:.1f} at the start, {load[1]:.1f} at the end.",
        "",
        "| stage, ms/step | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    for i, (name, _) in enumerate(rows[variants[0]]):
        lines.append(f"| {name} | " + " | ".join(f"{rows[v][i][1]:.2f}" for v in variants) + " |")
    plain = {v: statistics.median(windows.walls) for v, (windows, _) in results.items()}
    lines.append("| **unprofiled step wall** | " + " | ".join(f"{plain[v]:.2f}" for v in variants) + " |")
    lines.append(
        "| steps (profiled / unprofiled) | "
        + " | ".join(f"{len(results[v][1].walls)} / {len(results[v][0].walls)}" for v in variants)
        + " |"
    )
    return "\n".join(lines) + "\n"


def train_worker(args: argparse.Namespace) -> None:
    from mlet_dist.distributed.env import init_distributed, shutdown_distributed
    from mlet_dist.log_setup import quiet_library_logs

    quiet_library_logs()
    env = init_distributed("gloo")
    load_start = os.getloadavg()[0]
    results = {}
    for variant in args.train_variant.split(","):
        plain = run_train_variant(args, variant, env, profiled=False)
        results[variant] = (plain, run_train_variant(args, variant, env, profiled=True))
    text = breakdown_markdown(args, results, (load_start, os.getloadavg()[0]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    shutdown_distributed()


if __name__ == "__main__":
    arguments = parse()
    if not arguments.worker:
        bench.launch(arguments, __file__)
    elif arguments.train_data is not None:
        train_worker(arguments)
    else:
        worker(arguments)
