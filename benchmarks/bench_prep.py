"""Benchmark: mlet-prep (streaming, vectorised) vs a plain-Python line-by-line reference.

The input is synthetic Criteo Kaggle-format TSV (data_prep.synthetic, power-law ids
over tables of --table-size values) at each of --sizes MB. Each preparation runs
in a fresh child process so its peak RSS (ru_maxrss) is its own. The reference
does what the reference DLRM's data_utils does: count lines, parse every line in
Python into preallocated numpy arrays of the whole file, build per-feature dicts,
map, log-transform, split 7 ways, and write parquet at the end.

    python benchmarks/bench_prep.py                       # 50 MB and 200 MB (about 2-3 minutes)
    python benchmarks/bench_prep.py --sizes 20 --reference-sizes 20

MB/s is input megabytes (10**6 bytes) divided by the wall time of the whole preparation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_ours(src: Path, out: Path) -> None:
    from data_prep import prepare_criteo_kaggle

    prepare_criteo_kaggle(src, out, overwrite=True)


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
        pq.write_table(pa.table(cols), out / f"{name}.parquet", compression="zstd")


def _child(kind: str, src: Path, out: Path) -> None:
    t0 = time.perf_counter()
    (run_ours if kind == "ours" else run_reference)(src, out)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}))


def measure(kind: str, src: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--_child", kind, str(src), str(out)], capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["mb_per_s"] = src.stat().st_size / 1e6 / result["seconds"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[50.0, 200.0], help="input sizes in MB")
    parser.add_argument("--reference-sizes", type=float, nargs="*", default=None,
                        help="sizes at which to run the reference too (default: all --sizes)")
    parser.add_argument("--table-size", type=int, default=100_000, help="values per categorical table")
    parser.add_argument("--workdir", default=None, help="where to put inputs/outputs (default: a temp dir)")
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        kind, src, out = args._child
        _child(kind, Path(src), Path(out))
        return 0

    from data_prep.synthetic import write_criteo_tsv

    ref_sizes = args.sizes if args.reference_sizes is None else args.reference_sizes
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        print(f"{'MB':>7} {'impl':>9} {'seconds':>8} {'MB/s':>8} {'peak RSS MB':>12}")
        for size in args.sizes:
            src = work / f"criteo_{size:g}mb.tsv"
            write_criteo_tsv(src, size_mb=size, table_sizes=[args.table_size] * 26, seed=1)
            mb = src.stat().st_size / 1e6
            ours = measure("ours", src, work / f"ours_{size:g}")
            print(f"{mb:7.1f} {'mlet-prep':>9} {ours['seconds']:8.2f} {ours['mb_per_s']:8.1f} {ours['peak_rss_mb']:12.0f}",
                  flush=True)
            if size in ref_sizes:
                ref = measure("reference", src, work / f"ref_{size:g}")
                print(f"{mb:7.1f} {'reference':>9} {ref['seconds']:8.2f} {ref['mb_per_s']:8.1f} "
                      f"{ref['peak_rss_mb']:12.0f}")
                print(f"{'':7} {'ratio':>9} {'':8} {ours['mb_per_s'] / ref['mb_per_s']:7.1f}x", flush=True)
            os.remove(src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
