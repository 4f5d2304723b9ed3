"""fbgemm's CPU table update: microseconds per updated row of the TBE backward, per optimizer.

    python benchmarks/bench_table_update.py                    # D 16 and 64, 26x128 26x512 26x2048
    python benchmarks/bench_table_update.py --dims 64 --sizes 26x128 --threads 2
    python benchmarks/bench_table_update.py --index-dtype int32 --weighted

mlet-train's tables train in the TBE's backward (fused, in-backward optimizer). On CPU fbgemm
runs EXACT_ROWWISE_ADAGRAD (our default) through its JIT kernels (SpMDM + SparseAdaGrad, blocks
of 64 rows) and every other optimizer through a plain C++ loop. Which is faster depends on the
CPU: on the box this was written on the JIT SparseAdaGrad kernel cost ~0.8-1 us per row, 3-20x
the loop's (benchmarks/profiles/step_profile_b128_breakdown.md, "fbgemm's rowwise Adagrad on
CPU"); on an AMD EPYC (AVX-512) box the JIT path was ~1.7x faster than the loop. mlet-train keeps
the JIT path unless --cpu-table-update loop, so this script times, side by side on the same ids
and gradients:

  rowwise_adagrad        EXACT_ROWWISE_ADAGRAD as mlet-train builds it (the JIT path)
  rowwise_adagrad_loop   the same update through fbgemm's plain loop: the counter kernel
                         (WeightDecayMode.COUNTER) with neutral settings, which adds two state
                         tensors per table (prev_iter, row_counter) but not a term to the update
  sgd, adagrad           EXACT_SGD, EXACT_ADAGRAD (plain loops)

Each size is T tables x B bags of one id each (the authors' one id per feature), ids uniform in
--rows rows. A row's update is counted once per step however many bags hit it, so "us/row" is
the backward's median wall time over the distinct (table, id) pairs of the batch. The reps are
interleaved across optimizers, so a load burst on a shared box hits every column alike. Per size,
the two rowwise paths then train fresh copies for a few steps on the same batch and must agree
within --tolerance (an error line otherwise), so a fbgemm upgrade that changes either path shows
here. Run it on the training machine: where rowwise_adagrad_loop is the faster column, mlet-train
--cpu-table-update loop takes that path (and mlet-plan --cpu-table-update loop plans its 8 B/row).
"""

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, NoReturn, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from fbgemm_gpu.split_embedding_configs import EmbOptimType  # noqa: E402
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (  # noqa: E402
    ComputeDevice,
    EmbeddingLocation,
    SplitTableBatchedEmbeddingBagsCodegen,
)
from fbgemm_gpu.tbe.config.optimizer_config import CounterBasedRegularizationDefinition, WeightDecayMode  # noqa: E402

from mlet_dist.errors import user_error_exit  # noqa: E402

LR = 0.05  # mlet-train's --embedding-lr default
EPS = 1e-8  # OptimConfig.eps

# name -> fbgemm optimizer and the extra TBE arguments that pick its path
VARIANTS: Dict[str, Tuple[EmbOptimType, Dict[str, object]]] = {
    "rowwise_adagrad": (EmbOptimType.EXACT_ROWWISE_ADAGRAD, {"eps": EPS}),
    "rowwise_adagrad_loop": (
        EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        {
            "eps": EPS,
            "weight_decay_mode": WeightDecayMode.COUNTER,
            "counter_based_regularization": CounterBasedRegularizationDefinition(),
        },
    ),
    "sgd": (EmbOptimType.EXACT_SGD, {}),
    "adagrad": (EmbOptimType.EXACT_ADAGRAD, {"eps": EPS}),
}
SAME_UPDATE = ("rowwise_adagrad", "rowwise_adagrad_loop")
# Steps of the equivalence check. The paths round differently (the JIT kernel sums g^2 as a tree,
# the loop in order), a difference that grows with the steps on one repeated batch: a weight
# differed by 4e-7 after 20 steps and 1.2e-6 after 53, so the check runs a fixed few.
EQUIVALENCE_STEPS = 5


class _OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one ``error: ...`` line and exit 2, as in the project's CLIs."""

    def error(self, message: str) -> NoReturn:
        user_error_exit(f"{message} (`{self.prog} --help` lists every flag)")


def table_batch(text: str) -> Tuple[int, int]:
    """``26x128`` -> (26 tables, 128 bags per table)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"a size is TABLESxBATCH with both > 0, like 26x128; got {text!r}")
    return int(parts[0]), int(parts[1])


def positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return int(text)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = _OneLineParser(prog="bench_table_update.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", type=positive, nargs="+", default=[16, 64], help="embedding dims D")
    p.add_argument("--sizes", type=table_batch, nargs="+", default=[(26, 128), (26, 512), (26, 2048)])
    p.add_argument("--rows", type=positive, default=20_000, help="rows per table")
    p.add_argument("--reps", type=positive, default=15, help="timed steps per variant (median)")
    p.add_argument("--threads", type=positive, default=1, help="torch intra-op threads")
    p.add_argument("--index-dtype", choices=["int64", "int32"], default="int64")
    p.add_argument("--weighted", action="store_true", help="per-id weights (fbgemm's weighted path)")
    p.add_argument("--optimizers", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-6,
        help="max |weight difference| of the rowwise paths after EQUIVALENCE_STEPS",
    )
    return p.parse_args(argv)


@dataclass
class Batch:
    """One step's input: T x B bags of one id, the gradient of the pooled output, the row count."""

    indices: torch.Tensor
    offsets: torch.Tensor
    weights: "torch.Tensor | None"
    grad: torch.Tensor
    updated_rows: int


def make_batch(tables: int, batch: int, dim: int, args: argparse.Namespace) -> Batch:
    g = torch.Generator().manual_seed(tables * 7919 + batch + dim)
    dtype = getattr(torch, args.index_dtype)
    ids = torch.randint(0, args.rows, (tables, batch), generator=g)
    distinct = sum(int(torch.unique(row).numel()) for row in ids)
    return Batch(
        indices=ids.reshape(-1).to(dtype),
        offsets=torch.arange(tables * batch + 1, dtype=dtype),
        weights=torch.rand(tables * batch, generator=g) if args.weighted else None,
        grad=torch.randn(batch, tables * dim, generator=g),
        updated_rows=distinct,
    )


def build(name: str, tables: int, dim: int, rows: int) -> SplitTableBatchedEmbeddingBagsCodegen:
    """A host TBE of ``tables`` equal tables, every variant starting from the same weights."""
    optimizer, extra = VARIANTS[name]
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)] * tables,
        optimizer=optimizer,
        learning_rate=LR,
        **extra,
    )
    with torch.no_grad():
        tbe.weights_host.copy_(torch.randn(tbe.weights_host.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    return tbe


def backward_seconds(tbe: SplitTableBatchedEmbeddingBagsCodegen, batch: Batch) -> float:
    """One step: the forward untimed, the backward (where the fused update runs) timed."""
    out = tbe(batch.indices, batch.offsets, per_sample_weights=batch.weights)
    start = time.perf_counter()
    out.backward(batch.grad)
    return time.perf_counter() - start


def time_variants(tbes: Dict[str, SplitTableBatchedEmbeddingBagsCodegen], batch: Batch, reps: int) -> Dict[str, float]:
    """Median backward seconds per variant, reps interleaved (2 untimed warm-up steps each)."""
    for tbe in tbes.values():
        for _ in range(2):
            backward_seconds(tbe, batch)
    samples: Dict[str, List[float]] = {name: [] for name in tbes}
    for _ in range(reps):
        for name, tbe in tbes.items():
            samples[name].append(backward_seconds(tbe, batch))
    return {name: statistics.median(s) for name, s in samples.items()}


def rowwise_difference(tbes: Dict[str, SplitTableBatchedEmbeddingBagsCodegen]) -> Tuple[float, float]:
    """Max |weight| and max relative momentum difference between the two rowwise paths."""
    a, b = (tbes[name] for name in SAME_UPDATE)
    weights = (a.weights_host - b.weights_host).abs().max().item()
    momentum = ((a.momentum1_host - b.momentum1_host).abs() / a.momentum1_host.abs().clamp_min(1e-30)).max().item()
    return weights, momentum


def same_update_difference(tables: int, dim: int, batch: Batch, rows: int) -> Tuple[float, float]:
    """``rowwise_difference`` after EQUIVALENCE_STEPS steps of fresh copies of both rowwise paths."""
    tbes = {name: build(name, tables, dim, rows) for name in SAME_UPDATE}
    for _ in range(EQUIVALENCE_STEPS):
        for tbe in tbes.values():
            backward_seconds(tbe, batch)
    return rowwise_difference(tbes)


def row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def run(args: argparse.Namespace, emit: Callable[[str], None] = print) -> List[str]:
    """Print the table; return the equivalence failures (empty when the rowwise paths agree)."""
    torch.set_num_threads(args.threads)
    names = list(args.optimizers)
    emit(
        f"fbgemm CPU TBE backward, us per updated row (median of {args.reps}; {args.threads} thread(s), "
        f"{args.rows} rows/table, {args.index_dtype} ids, {'weighted' if args.weighted else 'unweighted'})"
    )
    emit(row(["D", "tables x batch", "updated rows", *names]))
    emit(row(["---"] * (3 + len(names))))
    failures: List[str] = []
    for dim in args.dims:
        for tables, bags in args.sizes:
            batch = make_batch(tables, bags, dim, args)
            tbes = {name: build(name, tables, dim, args.rows) for name in names}
            medians = time_variants(tbes, batch, args.reps)
            us = [f"{medians[n] * 1e6 / batch.updated_rows:.3f}" for n in names]
            emit(row([dim, f"{tables}x{bags}", batch.updated_rows, *us]))
            del tbes
            if all(n in names for n in SAME_UPDATE):
                weights, momentum = same_update_difference(tables, dim, batch, args.rows)
                if weights > args.tolerance:
                    failures.append(
                        f"D={dim} {tables}x{bags}: the two rowwise Adagrad paths differ by {weights:.3g} in a weight "
                        f"(momentum {momentum:.3g} relative) after {EQUIVALENCE_STEPS} steps; tolerance {args.tolerance:g}"
                    )
    return failures


def main(argv: Sequence[str] = tuple(sys.argv[1:])) -> None:
    failures = run(parse(argv))
    if failures:
        user_error_exit("; ".join(failures))


if __name__ == "__main__":
    main()
