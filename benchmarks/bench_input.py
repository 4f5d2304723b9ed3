"""Benchmark: training input that scales with the cluster.

1. Rank 0's own rows per second at world sizes W (one process plays rank 0 of W: that is all
   rank 0 does), for ``--data-order local`` (each rank decodes only its 1/W of the rows) and
   ``exact`` (every rank reads every global batch and keeps its slice). Interleaved, repeated.
2. End-to-end training samples/s on 2 gloo ranks (torchrun), TorchRec's TrainPipelineSparseDist
   vs the plain loop, interleaved in the same run.

    python benchmarks/bench_input.py                      # 1M rows, W = 1, 2, 8, 32 (~3 min)
    python benchmarks/bench_input.py --rows 50000 --worlds 1,2 --train-batches 4 --repeats 1

The dataset is the project's synthetic Criteo-schema data (data_prep.generate.synthetic), written with
the default row groups; it is kept under --work and reused when it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dataset(work: Path, rows: int, row_group_rows: int) -> Path:
    from data_prep.writers import PARQUET_COMPRESSION
    from data_prep.generate.synthetic import TABLE_SIZE_PRESETS, generate_dataset

    out = work / f"synthetic-{rows}-rg{row_group_rows}-{PARQUET_COMPRESSION}"
    if not (out / "meta.json").is_file():
        generate_dataset(
            out,
            rows,
            [min(c, 100_000) for c in TABLE_SIZE_PRESETS["criteo-kaggle"]],
            seed=0,
            overwrite=True,
            row_group_rows=row_group_rows,
        )
    return out


def rank0_rows_per_s(data: Path, world: int, batch: int, order: str, min_seconds: float) -> Dict[str, float]:
    """Rank 0's passes over its rows (one stream, pass after pass as epochs, like a run) until
    ``min_seconds`` have gone by: a W=32 pass is ~20 ms, too short to time alone on a shared box."""
    from mlet_dist.data.parquet_batches import ParquetBatchStream

    stream = ParquetBatchStream(data, "train", batch, rank=0, world_size=world, order=order, prefetch=0)
    rows = passes = decoded = 0
    seconds = cpu_seconds = 0.0
    while seconds < min_seconds:
        started, cpu_started = time.perf_counter(), time.process_time()
        rows += sum(lb.num_valid for lb in stream.iter_from(0, epoch=passes))
        seconds += time.perf_counter() - started
        cpu_seconds += time.process_time() - cpu_started
        decoded += stream.decoded_rows
        passes += 1
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "decoded_rows": decoded / passes,
        "rows_per_cpu_s": rows / cpu_seconds,
        "passes": passes,
    }


def train_samples_per_s(data: Path, work: Path, pipeline: str, batches: int, batch: int) -> float:
    run = work / f"train-{pipeline}-{time.time_ns()}"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(REPO / "mlet_dist" / "train.py"),
        "--data",
        str(data),
        "--run-dir",
        str(run),
        "--batch-size",
        str(batch),
        "--max-train-batches",
        str(batches),
        "--max-eval-batches",
        "1",
        "--no-progress",
        "--no-collapse",
        "--sharding",
        "table_wise",
        "--pipeline",
        pipeline,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MLET_TENSORBOARD="0")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"training run failed:\n{proc.stderr[-3000:]}")
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return float(next(e for e in events if e["event"] == "epoch")["samples_per_s"])


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--worlds", default="1,2,8,32")
    p.add_argument("--batch", type=int, default=2048, help="local batch (rows per rank per step)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--min-seconds", type=float, default=0.5, help="time rank 0's passes (epochs) until this long, per measurement"
    )
    p.add_argument("--train-batches", type=int, default=30, help="steps per end-to-end run (0: skip)")
    p.add_argument("--train-batch", type=int, default=512)
    p.add_argument("--row-group-rows", type=int, default=8192, help="parquet row group size of the dataset")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench_input")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default WORK/result.json)")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = dataset(args.work, args.rows, args.row_group_rows)
    worlds = [int(w) for w in args.worlds.split(",")]

    reads: Dict[str, Dict[int, List[dict]]] = {o: {w: [] for w in worlds} for o in ("local", "exact")}
    for _ in range(args.repeats):
        for w in worlds:
            for order in ("local", "exact"):
                reads[order][w].append(rank0_rows_per_s(data, w, args.batch, order, args.min_seconds))
    best = {o: {w: max(r["rows_per_s"] for r in reads[o][w]) for w in worlds} for o in reads}
    best_cpu = {o: {w: max(r["rows_per_cpu_s"] for r in reads[o][w]) for w in worlds} for o in reads}
    result: Dict[str, object] = {
        "rows": args.rows,
        "batch": args.batch,
        "rank0_rows_per_s": best,
        "rank0_rows_per_cpu_s": best_cpu,
        "decoded_rows": {o: {w: reads[o][w][-1]["decoded_rows"] for w in worlds} for o in reads},
        "ratio_to_w1": {o: {w: best[o][w] / best[o][worlds[0]] for w in worlds} for o in best},
        "cpu_ratio_to_w1": {o: {w: best_cpu[o][w] / best_cpu[o][worlds[0]] for w in worlds} for o in best_cpu},
    }
    print(
        f"rank 0's own rows/s, local batch {args.batch}, {args.rows:,} rows, {data.name} (best of {args.repeats}); "
        "per CPU-second too (the reading's own cost, steady when other jobs share the cores):"
    )
    print("   W   local rows/s  (vs W=1)   per CPU-s  (vs W=1)   exact rows/s  (vs W=1)")
    for w in worlds:
        print(
            f"{w:4d}  {best['local'][w]:13,.0f}  ({best['local'][w] / best['local'][worlds[0]]:5.2f}x)"
            f"  {best_cpu['local'][w]:10,.0f}  ({best_cpu['local'][w] / best_cpu['local'][worlds[0]]:5.2f}x)"
            f"  {best['exact'][w]:13,.0f}  ({best['exact'][w] / best['exact'][worlds[0]]:5.2f}x)"
        )

    if args.train_batches:
        speeds: Dict[str, List[float]] = {"sparse-dist": [], "none": []}
        for _ in range(args.repeats):
            for pipeline in speeds:
                speeds[pipeline].append(
                    train_samples_per_s(data, args.work, pipeline, args.train_batches, args.train_batch)
                )
        result["train_samples_per_s"] = speeds
        median = {k: sorted(v)[len(v) // 2] for k, v in speeds.items()}
        print(
            f"training on 2 gloo ranks, local batch {args.train_batch}: samples/s "
            f"pipelined {median['sparse-dist']:,.0f} vs plain {median['none']:,.0f} "
            f"({median['sparse-dist'] / median['none']:.2f}x); runs {speeds}"
        )
    out = args.out or args.work / "result.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
