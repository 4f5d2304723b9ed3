"""GPU benchmarks for `make gpu-check` (scripts/gpu_check.py runs this file in a subprocess).

    python benchmarks/bench_gpu.py --out bench.json --deadline-s 300            # one CUDA GPU
    python benchmarks/bench_gpu.py --out bench.json --dry-run                   # CPU, tiny sizes

Sections (each writes its result into --out as soon as it ends, so a run cut short by the
deadline keeps what it measured; a section that would start with less than its minimum time left
is recorded as skipped with the reason):

  step      ms per training step on 1 rank, table-wise, fused rowwise Adagrad + Adam, DLRM
            13-512-256-64-d / 512-256-1: MLET k=64 -> d=16 vs stock EBC d=16 and d=64, at each
            batch size, over the 26 Criteo Kaggle tables (rows capped so the widest variant's
            tables take at most --table-memory-fraction of free device memory). Ids are uniform
            per table (not Criteo's skew: cache effects of hot rows are not modelled).
  pipeline  MLET k=64 -> d=16 at the first batch size, host batches: the plain step vs the
            ``sparse-dist`` pipeline of mlet_dist.training.loop.StepSegment (TorchRec's
            TrainPipelineSparseDist) when mlet_dist/training/ has it; otherwise "not available"
            with the reason (nothing is measured in its place).
  collapse  GB/s of k-wide table read by mlet_dist.distributed.collapse.collapse_table vs the device's
            copy bandwidth (dst.copy_(T), read + write) and its bound for a collapse
            (copy bandwidth * k / (k + d)).
  serving   rows/s of the collapsed d=16 DLRM forward, fp32 vs int8 tables
            (mlet_dist.serving.quantize.quantize_serving_model), batches already on the device.
"""

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# Criteo Kaggle (Display Advertising Challenge) categorical cardinalities C1..C26, as in DLRM.
CRITEO_KAGGLE_ROWS = [
    1460,
    583,
    10131227,
    2202608,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    8351593,
    3194,
    27,
    14992,
    5461306,
    10,
    5652,
    2173,
    4,
    7046547,
    18,
    15,
    286181,
    105,
    142572,
]
SECTIONS = ("step", "pipeline", "collapse", "serving")
# Seconds each section may take at most, and the least it needs to start (real / dry run).
BUDGET_S = {"step": 130.0, "pipeline": 50.0, "collapse": 35.0, "serving": 50.0}
MIN_START_S = {"step": 40.0, "pipeline": 15.0, "collapse": 10.0, "serving": 15.0}


class Deadline:
    """Wall-clock limits: the whole run's and the current section's."""

    def __init__(self, total_s: float) -> None:
        self.end = time.monotonic() + total_s
        self.section_end = self.end

    def left(self) -> float:
        return min(self.end, self.section_end) - time.monotonic()

    def start_section(self, budget_s: float) -> None:
        self.section_end = min(self.end, time.monotonic() + budget_s)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def capped_rows(device: torch.device, k: int, cap: Optional[int], fraction: float) -> List[int]:
    """Criteo Kaggle rows per table, each capped so that the k-wide fp32 tables fit ``fraction``
    of the free device memory (``cap`` forces a cap; the dry run uses it)."""
    rows = list(CRITEO_KAGGLE_ROWS)
    if cap is None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free * fraction / (k * 4 + 8)  # rows that fit (+8: rowwise Adagrad state, slack)
        cap = max(rows)
        while sum(min(r, cap) for r in rows) > budget and cap > 1000:
            cap = int(cap * 0.9)
    return [min(r, cap) for r in rows] if cap is not None else rows


def make_batches(rows: List[int], batch: int, device: torch.device, count: int, seed: int = 0) -> List[Any]:
    """``count`` training batches (13 dense features, one id per table), built on ``device``."""
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.cat([torch.randint(0, n, (batch,), generator=g, device=device) for n in rows])
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=[f"C{i + 1}" for i in range(len(rows))],
            values=ids,
            lengths=torch.ones(len(rows) * batch, dtype=torch.int32, device=device),
        )
        out.append(
            Batch(
                torch.rand(batch, 13, generator=g, device=device),
                kjt,
                torch.randint(0, 2, (batch,), generator=g, device=device).float(),
            )
        )
    return out


def time_steps(
    fn: Callable[[int], None], device: torch.device, warmup: int, steps: int, deadline: Deadline
) -> Dict[str, Any]:
    """Median / mean seconds of ``fn(i)`` (device-synchronised each step); stops early at the
    section's deadline and says how many steps it timed."""
    for i in range(warmup):
        fn(i)
    sync(device)
    times: List[float] = []
    for i in range(steps):
        if deadline.left() <= 0:
            break
        start = time.perf_counter()
        fn(i)
        sync(device)
        times.append(time.perf_counter() - start)
    if not times:
        return {"steps_timed": 0}
    return {
        "steps_timed": len(times),
        "median_ms": statistics.median(times) * 1e3,
        "mean_ms": statistics.fmean(times) * 1e3,
    }


def bench_step(
    device: torch.device,
    batch_sizes: List[int],
    rows: List[int],
    warmup: int,
    steps: int,
    deadline: Deadline,
    dense: Dict[str, List[int]],
) -> Dict[str, Any]:
    from torchrec.models.dlrm import DLRMTrain

    from mlet_dist.distributed.env import init_distributed
    from mlet_dist.distributed.sharding import ShardingConfig, shard_model
    from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection
    from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer

    env = init_distributed("nccl" if device.type == "cuda" else "gloo")
    tables = {f"C{i + 1}": n for i, n in enumerate(rows)}
    variants = {
        "mlet_k64_d16": EmbeddingSpec(16, 64, mlet=True),
        "ebc_d16": EmbeddingSpec(16, 64, mlet=False),
        "ebc_d64": EmbeddingSpec(64, 64, mlet=False),
    }
    result: Dict[str, Any] = {
        "ranks": env.world_size,
        "backend": env.backend,
        "sharding": "table_wise",
        "tables": len(rows),
        "rows_per_table": rows,
        "total_rows": sum(rows),
        "optimizers": "fused rowwise_adagrad (tables) + adam (dense)",
        "dlrm_bottom_mlp": dense["bottom"],
        "dlrm_top_mlp": dense["top"],
        "ids": "uniform per table",
        "by_batch": {},
    }
    for batch in batch_sizes:
        per: Dict[str, Any] = {}
        for name, spec in variants.items():
            if deadline.left() <= 0:
                per[name] = {"skipped": "section deadline reached"}
                continue
            sharded = opt = batches = model = collection = None
            try:
                torch.manual_seed(0)
                collection = build_embedding_collection(tables, spec, device=torch.device("meta"))
                model = DLRMTrain(
                    build_dlrm(
                        collection,
                        DLRMConfig(bottom_mlp=dense["bottom"], top_mlp=dense["top"]),
                        dense_device=torch.device("meta"),
                    )
                )
                optim = OptimConfig()
                attach_fused_embedding_optimizer(model, optim, env.device.type)
                sharded = shard_model(model, env, ShardingConfig("table_wise"))
                opt = build_optimizer(sharded, optim)
                batches = make_batches(rows, batch, env.device, 4)

                def step(i: int) -> None:
                    opt.zero_grad()
                    loss, _ = sharded(batches[i % len(batches)])
                    loss.backward()
                    opt.step()

                timing = time_steps(step, env.device, warmup, steps, deadline)
                if "median_ms" in timing:
                    timing["samples_per_s"] = batch / (timing["median_ms"] / 1e3)
                if device.type == "cuda":
                    timing["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                    torch.cuda.reset_peak_memory_stats(device)
                per[name] = timing
            except torch.cuda.OutOfMemoryError as err:  # recorded, and the next variant still runs
                per[name] = {"error": f"out of memory: {str(err).splitlines()[0]}"}
            finally:  # one variant's tables leave the device before the next one's are made
                sharded = opt = batches = model = collection = None
                free_memory()
        base = per.get("ebc_d16", {}).get("median_ms")
        for name, timing in per.items():
            if base and "median_ms" in timing:
                timing["vs_ebc_d16"] = timing["median_ms"] / base
        d64 = per.get("ebc_d64", {}).get("median_ms")
        if d64 and "median_ms" in per.get("mlet_k64_d16", {}):
            per["mlet_k64_d16"]["vs_ebc_d64"] = per["mlet_k64_d16"]["median_ms"] / d64
        result["by_batch"][str(batch)] = per
    return result


def _build_trainable(spec: Any, rows: List[int], env: Any, dense: Dict[str, List[int]]) -> Any:
    """A DLRM over ``rows`` tables, sharded table-wise on ``env``, and its combined optimizer."""
    from torchrec.models.dlrm import DLRMTrain

    from mlet_dist.distributed.sharding import ShardingConfig, shard_model
    from mlet_dist.models import DLRMConfig, build_dlrm, build_embedding_collection
    from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer

    torch.manual_seed(0)
    tables = {f"C{i + 1}": n for i, n in enumerate(rows)}
    collection = build_embedding_collection(tables, spec, device=torch.device("meta"))
    model = DLRMTrain(
        build_dlrm(
            collection, DLRMConfig(bottom_mlp=dense["bottom"], top_mlp=dense["top"]), dense_device=torch.device("meta")
        )
    )
    optim = OptimConfig()
    attach_fused_embedding_optimizer(model, optim, env.device.type)
    sharded = shard_model(model, env, ShardingConfig("table_wise"))
    return sharded, build_optimizer(sharded, optim)


def bench_pipeline(
    device: torch.device,
    batch: int,
    rows: List[int],
    warmup: int,
    steps: int,
    deadline: Deadline,
    dense: Dict[str, List[int]],
) -> Dict[str, Any]:
    """MLET k=64 -> d=16, host-resident batches (as the parquet reader yields them): the plain
    step (copy, forward, backward, update) vs mlet_dist.training.loop.StepSegment's
    ``sparse-dist`` pipeline (TorchRec's TrainPipelineSparseDist: next batch's copy and input
    dist overlapped). Mean step time over the timed steps, one sync at each end. Without StepSegment in mlet_dist/training/ it reports "not available"
    rather than measuring something else under that name."""
    from types import SimpleNamespace

    try:
        from mlet_dist.training import loop
    except ImportError as err:
        return {"status": "not available", "reason": f"mlet_dist.training.loop does not import: {err}"}
    segment_cls = getattr(loop, "StepSegment", None)
    if segment_cls is None or "sparse-dist" not in getattr(loop, "PIPELINES", ()):
        return {
            "status": "not available",
            "reason": "mlet_dist/training/loop.py has no pipelined step (no StepSegment with a 'sparse-dist' "
            "pipeline); only the plain loop exists, so there is nothing to compare",
        }
    from mlet_dist.distributed.env import init_distributed
    from mlet_dist.models import EmbeddingSpec

    env = init_distributed("nccl" if device.type == "cuda" else "gloo")
    host = make_batches(rows, batch, torch.device("cpu"), 4, seed=7)
    if device.type == "cuda":
        host = [b.pin_memory() for b in host]
    result: Dict[str, Any] = {
        "model": "mlet_k64_d16",
        "batch": batch,
        "tables": len(rows),
        "total_rows": sum(rows),
        "batches": "host (pinned on cuda), copied by each step",
        "by_pipeline": {},
    }
    for pipeline in ("none", "sparse-dist"):
        if deadline.left() <= 0:
            result["by_pipeline"][pipeline] = {"skipped": "section deadline reached"}
            continue
        sharded, opt = _build_trainable(EmbeddingSpec(16, 64, mlet=True), rows, env, dense)
        n = warmup + steps
        segment = segment_cls(
            sharded, opt, (SimpleNamespace(batch=host[i % 4], num_valid=batch) for i in range(n)), env.device, pipeline
        )
        timed, started = 0, 0.0
        for i, _loss in enumerate(segment):  # no per-step sync: the pipeline may run ahead
            if i == warmup - 1:
                sync(env.device)
                started = time.perf_counter()
            elif i >= warmup:
                timed += 1
                if deadline.left() <= 0:
                    break
        sync(env.device)
        seconds = time.perf_counter() - started
        segment.close()
        entry: Dict[str, Any] = {"steps_timed": timed}
        if timed:
            entry["mean_ms"] = seconds / timed * 1e3
        if pipeline != "none":
            entry["pipelined_modules"] = segment.pipelined_modules
        result["by_pipeline"][pipeline] = entry
        sharded = opt = segment = None
        free_memory()
    plain = result["by_pipeline"].get("none", {}).get("mean_ms")
    piped = result["by_pipeline"].get("sparse-dist", {}).get("mean_ms")
    if plain and piped:
        result["pipelined_vs_plain"] = piped / plain
    return result


def bench_collapse(device: torch.device, rows: int, k: int, d: int, repeats: int, deadline: Deadline) -> Dict[str, Any]:
    from mlet_dist.distributed.collapse import DEFAULT_CHUNK_ROWS, collapse_table

    g = torch.Generator(device=device).manual_seed(0)
    table = torch.rand(rows, k, generator=g, device=device)
    proj = torch.randn(k, d, generator=g, device=device)
    dst, out = torch.empty_like(table), torch.empty(rows, d, device=device)
    fns = {
        "copy": lambda: dst.copy_(table),
        "collapse": lambda: collapse_table(table, proj, DEFAULT_CHUNK_ROWS, out=out),
        "matmul": lambda: torch.matmul(table, proj),
    }
    best = {name: float("inf") for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    rounds = 0
    for _ in range(repeats):
        if deadline.left() <= 0:
            break
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
        rounds += 1
    read_bytes = rows * k * 4
    copy_bw = 2 * read_bytes / best["copy"]  # read + write
    bound = copy_bw * k / (k + d)
    collapse_rate = read_bytes / best["collapse"]
    return {
        "table": [rows, k],
        "projection": [k, d],
        "dtype": "float32",
        "table_gb": read_bytes / 1e9,
        "chunk_rows": DEFAULT_CHUNK_ROWS,
        "rounds": rounds,
        "best_seconds": best,
        "tf32": bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
        "copy_bandwidth_gbs": copy_bw / 1e9,
        "collapse_bound_gbs": bound / 1e9,
        "collapse_read_gbs": collapse_rate / 1e9,
        "matmul_read_gbs": read_bytes / best["matmul"] / 1e9,
        "collapse_vs_copy_bandwidth": collapse_rate / copy_bw,
        "collapse_vs_bound": collapse_rate / bound,
    }


def bench_serving(
    device: torch.device,
    batch_sizes: List[int],
    rows: List[int],
    steps: int,
    deadline: Deadline,
    dense: Dict[str, List[int]],
) -> Dict[str, Any]:
    from mlet_dist.serving.model import ServingModelConfig, TableSpec, build_serving_model
    from mlet_dist.serving.quantize import quantize_serving_model

    config = ServingModelConfig(
        arch="dlrm",
        dense_in_features=13,
        dense_arch_layer_sizes=[*dense["bottom"], 16],
        over_arch_layer_sizes=list(dense["top"]),
        tables=[TableSpec(f"t_C{i + 1}", n, 16, [f"C{i + 1}"]) for i, n in enumerate(rows)],
    )
    torch.manual_seed(0)
    model = build_serving_model(config, device)
    net = model.model.eval()
    batches = {b: make_batches(rows, b, device, 2, seed=b) for b in batch_sizes}
    result: Dict[str, Any] = {
        "embedding_dim": 16,
        "tables": len(rows),
        "total_rows": sum(rows),
        "what": "DLRM forward (no_grad), batches on the device; host input not timed",
        "by_batch": {str(b): {} for b in batch_sizes},
    }
    reference: Dict[int, torch.Tensor] = {}
    for precision in ("fp32", "int8"):
        if precision == "int8":
            memory = quantize_serving_model(model, "int8")
            result["int8_table_bytes"], result["fp32_table_bytes"] = memory.table_bytes, memory.fp32_bytes
        for b, bs in batches.items():
            if deadline.left() <= 0:
                result["by_batch"][str(b)][precision] = {"skipped": "section deadline reached"}
                continue

            @torch.no_grad()
            def forward(i: int) -> None:
                net(dense_features=bs[i % 2].dense_features, sparse_features=bs[i % 2].sparse_features)

            timing = time_steps(forward, device, 2, steps, deadline)
            if "median_ms" in timing:
                timing["rows_per_s"] = b / (timing["median_ms"] / 1e3)
            with torch.no_grad():
                probs = torch.sigmoid(
                    net(dense_features=bs[0].dense_features, sparse_features=bs[0].sparse_features).float()
                ).reshape(-1)
            if precision == "fp32":
                reference[b] = probs
            else:
                timing["max_abs_prob_diff_vs_fp32"] = float((probs - reference[b]).abs().max())
            result["by_batch"][str(b)][precision] = timing
    for per in result["by_batch"].values():
        if "rows_per_s" in per.get("fp32", {}) and "rows_per_s" in per.get("int8", {}):
            per["int8_vs_fp32_rows_per_s"] = per["int8"]["rows_per_s"] / per["fp32"]["rows_per_s"]
    return result


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON file, rewritten after every section")
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny sizes: checks the code path, measures nothing real"
    )
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--deadline-s", type=float, default=sum(BUDGET_S.values()), help="for all sections together")
    p.add_argument("--batch-sizes", default=None, help="default 8192,65536 (dry: 64)")
    p.add_argument(
        "--table-memory-fraction",
        type=float,
        default=0.25,
        help="the widest variant's tables take at most this much of free device memory",
    )
    p.add_argument("--collapse-rows", type=int, default=None, help="rows of the collapsed table (default 16M; dry 20k)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    from mlet_dist.log_setup import quiet_library_logs

    quiet_library_logs()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device (torch.cuda.is_available() is False); use --dry-run on CPU")
    device = torch.device("cpu") if dry else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # TF32 left at torch's default, as training runs; recorded
    batch_sizes = [int(b) for b in (args.batch_sizes or ("64" if dry else "8192,65536")).split(",")]
    dense = {"bottom": [16], "top": [16, 1]} if dry else {"bottom": [512, 256, 64], "top": [512, 256, 1]}
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"bench_gpu: unknown sections {unknown}; choose from {list(SECTIONS)}")
    deadline = Deadline(args.deadline_s)
    report: Dict[str, Any] = {"dry_run": dry, "device": str(device), "sections": {}}

    def write() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        tmp.replace(args.out)

    for name in sections:
        left = deadline.left()
        if left < (0.0 if dry else MIN_START_S[name]):
            report["sections"][name] = {"status": "skipped", "reason": f"only {left:.0f}s of the run's deadline left"}
            write()
            continue
        deadline.start_section(BUDGET_S[name])
        started = time.monotonic()
        try:
            if name == "step":
                rows = capped_rows(device, 64, 500 if dry else None, args.table_memory_fraction)
                body = bench_step(device, batch_sizes, rows, 1 if dry else 3, 2 if dry else 30, deadline, dense)
            elif name == "pipeline":
                rows = capped_rows(device, 64, 500 if dry else None, args.table_memory_fraction)
                body = bench_pipeline(device, batch_sizes[0], rows, 2 if dry else 5, 2 if dry else 30, deadline, dense)
            elif name == "collapse":
                n = args.collapse_rows or (20_000 if dry else 16_000_000)
                body = bench_collapse(device, n, 64, 16, 2 if dry else 5, deadline)
            else:
                rows = capped_rows(device, 16, 500 if dry else None, args.table_memory_fraction)
                body = bench_serving(device, batch_sizes, rows, 2 if dry else 30, deadline, dense)
            body.setdefault("status", "ok")
        except Exception as err:  # one section failing must not lose the others' figures
            body = {"status": "error", "error": f"{type(err).__name__}: {err}"}
        finally:
            free_memory()
        body["seconds"] = round(time.monotonic() - started, 2)
        body["budget_s"] = BUDGET_S[name]
        report["sections"][name] = body
        write()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
