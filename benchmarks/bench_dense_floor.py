"""The dense part of one DLRM step alone: the floor under any MLET step at the authors' configuration.

    python benchmarks/bench_dense_floor.py                     # batch 128, 2 threads, d 16
    python benchmarks/bench_dense_floor.py --batch-size 128 --threads 2 --steps 300

Issue 29 asks for 1.5x (aim 2x) the authors' samples/s at batch 128 on one process. Both codes
run the same bottom MLP 13-512-256-64-d, dot interaction over 26 tables and top MLP 512-256-1;
this times only those (forward, backward, optimizer step) on random inputs, with the 26 pooled
embeddings given as a tensor that takes a gradient as the real lookup's output does. No tables,
no input pipeline, no projection: whatever a full step costs on top of this is what an
implementation can cut; this floor it cannot (without changing the model or its arithmetic).
Prints ms/step per dense optimizer and the samples/s ceiling 1000 * batch / ms; with
``--theirs SAMPLES_PER_S`` (the authors' figure from ../shared/anchors/dlrm_mlet/pair.sh in the
same quiet window), also the ratio that ceiling allows.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlet_dist.models import EmbeddingSpec, build_embedding_collection  # noqa: E402
from mlet_dist.models.dlrm import DLRMConfig, build_dlrm  # noqa: E402
from torchrec.models.dlrm import DLRM  # noqa: E402

NUM_TABLES = 26


class DenseStep(nn.Module):
    """A DLRM's dense arch, dot interaction and over arch (its own modules, shared) on given
    pooled embeddings [B, tables, d]: no sparse arch."""

    def __init__(self, model: DLRM) -> None:
        super().__init__()
        self.dense_arch, self.inter_arch, self.over_arch = model.dense_arch, model.inter_arch, model.over_arch

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.over_arch(self.inter_arch(self.dense_arch(dense), sparse)).squeeze(-1)


def default_dense_step(d: int) -> DenseStep:
    """The dense part of mlet-train's default model (build_dlrm, DLRMConfig()) over 26 tables of width d."""
    tables = build_embedding_collection({f"C{i}": 1 for i in range(NUM_TABLES)}, EmbeddingSpec(d, mlet=False))
    return DenseStep(build_dlrm(tables, DLRMConfig()))


def optimizer(name: str, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.2)
    return torch.optim.Adam(params, lr=1e-3, fused=True)


def time_steps(model: DenseStep, opt_name: str, batch: int, d: int, steps: int, warmup: int) -> List[float]:
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(batch, 13, generator=g)
    labels = (torch.rand(batch, generator=g) < 0.25).float()
    sparse = torch.randn(batch, NUM_TABLES, d, generator=g)
    opt = optimizer(opt_name, list(model.parameters()))
    loss_fn = nn.BCEWithLogitsLoss()
    times = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        opt.zero_grad()
        pooled = sparse.clone().requires_grad_(True)  # the lookup's output takes a gradient
        loss = loss_fn(model(dense, pooled), labels)
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append((time.perf_counter() - started) * 1000)
    return times


def run(batch: int, d: int, threads: int, steps: int, warmup: int, rounds: int) -> Dict[str, float]:
    """Median ms/step per dense optimizer, rounds interleaved so a load burst hits both alike."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {name: default_dense_step(d) for name in ("sgd", "adam")}
    per: Dict[str, List[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            per[name] += time_steps(model, name, batch, d, steps, warmup)
    return {name: statistics.median(times) for name, times in per.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=100, help="timed steps per round and optimizer")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--theirs", type=float, default=None, help="the authors' samples/s from pair.sh, same window")
    args = p.parse_args(argv)
    if min(args.batch_size, args.embedding_dim, args.threads, args.steps, args.rounds) < 1 or args.warmup < 0:
        p.error("sizes, threads, steps and rounds must be >= 1, warmup >= 0")
    medians = run(args.batch_size, args.embedding_dim, args.threads, args.steps, args.warmup, args.rounds)
    print(f"dense part of a DLRM step, batch {args.batch_size}, d {args.embedding_dim}, {args.threads} threads:")
    for name, ms in medians.items():
        ceiling = 1000 * args.batch_size / ms
        line = f"  {name:4s} {ms:7.2f} ms/step  ceiling {ceiling:9,.0f} samples/s"
        if args.theirs:
            line += f"  = {ceiling / args.theirs:.2f}x theirs at most"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
