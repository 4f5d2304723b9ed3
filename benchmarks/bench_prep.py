"""Benchmark: mlet-prep at 1..N worker processes vs pyarrow's one pass (and a line-by-line reference).

The input is synthetic Criteo Kaggle-format TSV (data_prep.generate.synthetic, power-law ids over tables of
--table-size values) at each of --sizes MB. Rows, side by side in one run:

* `mlet-prep wN`: prepare_criteo_kaggle with --workers N on N cores (the process and its workers
  pinned with sched_setaffinity: `w1` is one core, not one process with threads on all cores), two
  passes + the tail pass, validation, rejects, splits, vocabularies; the same output bytes for every
  N. `vs w1` is therefore the scaling from 1 to N cores;
* `pyarrow`: pyarrow's multithreaded CSV reader (all cores) + dictionary encoding of the 26
  categorical columns + one parquet write with our codec (LZ4_RAW): one pass, no validation, rejects, splits or
  vocabulary ordering (the issue's reference point);
* `reference` (only at --reference-sizes): what the reference DLRM's data_utils does, line by line
  in Python, everything in memory.

MB/cpu-s divides by the CPU seconds of the run and its workers: the per-core rate, which on a
shared (loaded) box is steadier than MB/s and is what a many-core estimate scales. Each run is a fresh
child process; peak RSS is the largest of the child and its own worker
processes together (sampled), so it is what the machine needs. Ratios: each mlet-prep row / pyarrow, and wN / w1 (scaling).

    nice -n 10 python benchmarks/bench_prep.py                 # 50 and 200 MB, workers 1 and 2
    nice -n 10 python benchmarks/bench_prep.py --sizes 100 --workers 1 2 4
    python benchmarks/bench_prep.py --sizes 200 --repeats 3    # medians of 3 interleaved runs

MB/s is input megabytes (10**6 bytes) divided by the wall time of the whole preparation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.writers import PARQUET_COMPRESSION  # noqa: E402  (the baselines write what we write)


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest worker process
    return max(own, children) / 1024.0  # Linux: KiB


def run_ours(src: Path, out: Path, workers: int = 1) -> None:
    from data_prep import prepare_criteo_kaggle

    prepare_criteo_kaggle(src, out, overwrite=True, workers=workers)


def run_pyarrow(src: Path, out: Path) -> None:
    """One pass: multithreaded CSV read, dictionary-encoded categoricals, one parquet file."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    names = ["label"] + [f"I{k}" for k in range(1, 14)] + [f"C{k}" for k in range(1, 27)]
    types = {
        "label": pa.int8(),
        **{f"I{k}": pa.float64() for k in range(1, 14)},
        **{f"C{k}": pa.dictionary(pa.int32(), pa.string()) for k in range(1, 27)},
    }
    table = pcsv.read_csv(
        src,
        read_options=pcsv.ReadOptions(column_names=names, use_threads=True, block_size=8 << 20),
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False),
    )
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "data.parquet", compression=PARQUET_COMPRESSION)


def run_reference(src: Path, out: Path) -> None:
    """Line-by-line, everything in memory (the reference DLRM's approach)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(src) as f:
        n = sum(1 for _ in f)
    y = np.zeros(n, dtype="i4")
    x_int = np.zeros((n, 13), dtype="i4")
    x_cat = np.zeros((n, 26), dtype="i8")
    rows = 0
    with open(src) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 40:
                continue
            y[rows] = int(fields[0])
            x_int[rows] = [max(int(v), 0) if v else 0 for v in fields[1:14]]
            x_cat[rows] = [int(v, 16) if v else -1 for v in fields[14:]]
            rows += 1
    y, x_int, x_cat = y[:rows], x_int[:rows], x_cat[:rows]
    chunks = np.array_split(np.arange(rows), 7)
    train_end = sum(len(c) for c in chunks[:6])
    val_end = train_end + math.ceil(len(chunks[6]) / 2)
    ids = np.zeros_like(x_cat)
    for j in range(26):
        counts: dict = {}
        for v in x_cat[:train_end, j].tolist():
            counts[v] = counts.get(v, 0) + 1
        order = sorted(counts, key=lambda v: (-counts[v], v))
        mapping = {v: i + 1 for i, v in enumerate(order)}
        ids[:, j] = [mapping.get(v, 0) for v in x_cat[:, j].tolist()]
    dense = np.log1p(x_int.astype(np.float64)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    for name, lo, hi in (("train", 0, train_end), ("val", train_end, val_end), ("test", val_end, rows)):
        cols = {"label": pa.array(y[lo:hi].astype(np.int8))}
        cols.update({f"I{k + 1}": pa.array(dense[lo:hi, k]) for k in range(13)})
        cols.update({f"C{k + 1}": pa.array(ids[lo:hi, k]) for k in range(26)})
        pq.write_table(pa.table(cols), out / f"{name}.parquet", compression=PARQUET_COMPRESSION)


def _pin(cores: int) -> int:
    """Run this process (and the workers it starts) on its first `cores` allowed CPUs; how many it got."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:cores])
    return min(cores, len(allowed))


def _child(kind: str, src: Path, out: Path) -> None:
    t0 = time.perf_counter()
    if kind.startswith("w"):
        workers = int(kind[1:])
        _pin(workers)
        run_ours(src, out, workers)
    else:
        (run_pyarrow if kind == "pyarrow" else run_reference)(src, out)
    seconds = time.perf_counter() - t0
    cpu = sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss_mb": _peak_rss_mb(),
                "cores": len(os.sched_getaffinity(0)),
            }
        )
    )


def _watch(proc: subprocess.Popen) -> tuple:
    """(CPU seconds, peak RSS MB) of the child and every process under it (the workers of a
    forkserver are not its children, so rusage misses them), sampled every 0.1 s."""
    import psutil

    root = psutil.Process(proc.pid)
    cpu: dict = {}
    peak = 0.0
    while proc.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.Error:
            break
        rss = 0
        for p in tree:
            try:
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, rss / 2**20)
        time.sleep(0.1)
    return sum(cpu.values()), peak


def measure(kind: str, src: Path, out: Path) -> dict:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--_child", kind, str(src), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    cpu, tree_rss = _watch(proc)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{stderr}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["cpu_seconds"] = max(result["cpu_seconds"], cpu)
    result["peak_rss_mb"] = max(result["peak_rss_mb"], tree_rss)  # all processes at once
    result["mb_per_s"] = src.stat().st_size / 1e6 / result["seconds"]
    result["mb_per_cpu_s"] = src.stat().st_size / 1e6 / max(result["cpu_seconds"], 1e-9)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[50.0, 200.0], help="input sizes in MB")
    parser.add_argument(
        "--reference-sizes",
        type=float,
        nargs="*",
        default=[],
        help="sizes at which to run the line-by-line reference too (default: none)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="mlet-prep worker counts")
    parser.add_argument("--table-size", type=int, default=100_000, help="values per categorical table")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each row, interleaved; medians are printed")
    parser.add_argument("--workdir", default=None, help="where to put inputs/outputs (default: a temp dir)")
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        kind, src, out = args._child
        _child(kind, Path(src), Path(out))
        return 0

    from data_prep.generate.synthetic import write_criteo_tsv

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.repeats > 1:
            print(
                f"medians of {args.repeats} interleaved runs; wN runs on N cores (this box allows {len(os.sched_getaffinity(0))})"
            )
        print(
            f"{'MB':>7} {'impl':>12} {'cores':>5} {'seconds':>8} {'MB/s':>8} {'peak RSS MB':>12} {'vs pyarrow':>11} "
            f"{'vs w1':>6} {'MB/cpu-s':>9}"
        )
        for size in args.sizes:
            src = work / f"criteo_{size:g}mb.tsv"
            write_criteo_tsv(src, size_mb=size, table_sizes=[args.table_size] * 26, seed=1)
            mb = src.stat().st_size / 1e6
            kinds = {"pyarrow": "pyarrow", **{f"mlet-prep w{w}": f"w{w}" for w in args.workers}}
            if size in args.reference_sizes:
                kinds["reference"] = "reference"
            runs: dict = {name: [] for name in kinds}
            for _ in range(args.repeats):  # interleaved, so that a noisy minute hits every row alike
                for name, kind in kinds.items():
                    runs[name].append(measure(kind, src, work / kind))
            rows = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
            base, one = rows["pyarrow"]["mb_per_s"], rows.get("mlet-prep w1", {}).get("mb_per_s")
            for name, r in rows.items():
                vs_w1 = f"{r['mb_per_s'] / one:5.2f}x" if one and name.startswith("mlet") else ""
                print(
                    f"{mb:7.1f} {name:>12} {r['cores']:5.0f} {r['seconds']:8.2f} {r['mb_per_s']:8.1f} {r['peak_rss_mb']:12.0f} "
                    f"{r['mb_per_s'] / base:10.2f}x {vs_w1:>6} {r['mb_per_cpu_s']:9.1f}",
                    flush=True,
                )
            os.remove(src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
