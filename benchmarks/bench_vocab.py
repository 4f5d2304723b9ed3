"""Benchmark: mlet-prep's count and vocabulary passes as one feature's distinct values grow (issue 26).

Criteo Kaggle's largest features hold 2.2M-10.1M distinct values; the counting/vocabulary path was only
exercised at ~124k. This prepares the same number of rows at each --distinct (C1 gets that many
distinct train values, C2 and C3 stay small, the other columns are empty: a narrow TSV, so the
per-value work is not hidden under per-byte parsing) and times, per phase, in a fresh child process:

* count: pass 1 (validate, count every block's train values, merge them) + Kaggle's tail pass;
* vocabulary: ids from the counts, vocab/*.parquet, the lookup tables pass 2 encodes through;
* write: pass 2 (encode, parquet parts).

``us/value`` is the count + vocabulary time above that of the smallest --distinct, per extra distinct
value: flat when the path is linear in the values, growing when something is quadratic or falls off
a fast path. Peak RSS is the child and its worker processes together (sampled every 0.1 s); CPU
seconds include the workers, and on a shared box are steadier than wall seconds.

    nice -n 10 python benchmarks/bench_vocab.py                                # 3.5M rows, 100k..3M
    python benchmarks/bench_vocab.py --rows 1000000 --distinct 100000 800000 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL = (100, 1000)  # distinct values of C2, C3
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def hex8(values: np.ndarray) -> np.ndarray:
    """(n, 8) ASCII hex digits of uint32 values, most significant first."""
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    return _HEX[(values[:, None].astype(np.uint32) >> shifts) & 0xF]


def scrambled(ids: np.ndarray) -> np.ndarray:
    """Distinct uint32 raw values for distinct ids below 2**32 (an odd multiplier is a bijection
    mod 2**32), so a feature's raw values are neither sorted nor clustered in the input."""
    return (ids.astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64(12345)).astype(np.uint32)


def write_tsv(path: Path, c1_ids: np.ndarray, seed: int = 0) -> None:
    """Criteo Kaggle TSV of fixed-width lines, one per C1 id: label, I1, C1 (the id's raw value),
    C2/C3 (SMALL values), everything else empty."""
    rng = np.random.default_rng(seed)
    fields = [1, 1] + [0] * 12 + [8, 8, 8] + [0] * 23  # label, I1..I13, C1..C26
    width = sum(fields) + len(fields)  # a tab after each field but the last, then the newline
    with open(path, "wb") as f:
        for lo in range(0, len(c1_ids), 1 << 20):
            ids = c1_ids[lo : lo + (1 << 20)]
            n = len(ids)
            line = np.full((n, width), ord("\t"), np.uint8)
            line[:, -1] = ord("\n")
            columns = iter(
                [
                    ord("0") + rng.integers(0, 2, n),
                    ord("0") + np.arange(lo, lo + n) % 10,
                    hex8(scrambled(ids)),
                    hex8(scrambled(rng.integers(0, SMALL[0], n) + (1 << 30))),
                    hex8(scrambled(rng.integers(0, SMALL[1], n) + (1 << 31))),
                ]
            )
            at = 0
            for w in fields:
                if w:
                    line[:, at : at + w] = next(columns).reshape(n, w)
                at += w + 1
            f.write(line.tobytes())


def train_rows(rows: int) -> int:
    """Rows of the Kaggle split's train part (6 of 7 chunks, as data_prep.splits.ChunkSplit)."""
    return sum(len(c) for c in np.array_split(np.arange(rows), 7)[:6])


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and its descendants (the prep's worker processes) so far."""
    import psutil

    total = 0.0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _timed(phases: Dict[str, List[float]], label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` adding its wall and CPU seconds (of the whole process tree) to ``phases[label]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), tree_cpu_seconds()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = phases.setdefault(label, [0.0, 0.0])
            spent[0] += time.perf_counter() - wall
            spent[1] += tree_cpu_seconds() - cpu

    return wrapper


def child(src: Path, out: Path, workers: int) -> None:
    """Prepare ``src`` once, the driver's phases wrapped in timers (this process only)."""
    import resource

    from data_prep import prepare_criteo_kaggle
    from data_prep.parallel import driver

    phases: Dict[str, List[float]] = {}
    for name, label in (
        ("_pass1", "count"),
        ("_tail", "count"),
        ("staged_vocabularies", "vocabulary"),
        ("save_tables", "vocabulary"),
        ("_pass2", "write"),
    ):
        setattr(driver, name, _timed(phases, label, getattr(driver, name)))
    started = time.perf_counter()
    result = prepare_criteo_kaggle(src, out, overwrite=True, workers=workers, progress=False)
    seconds = time.perf_counter() - started
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
                "phases": phases,
                "vocabulary": result.meta["table_sizes"]["C1"] - 1,
            }
        )
    )


def measure(src: Path, out: Path, workers: int) -> Dict[str, Any]:
    """One preparation in a fresh process: its phases, wall and CPU seconds, peak RSS of the tree."""
    from bench_prep import _watch

    proc = subprocess.Popen(
        [sys.executable, __file__, "--_child", str(src), str(out), str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    cpu, peak = _watch(proc)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"workers={workers} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["cpu_seconds"] = max(result["cpu_seconds"], cpu)
    result["peak_rss_mb"] = peak
    return result


def counted_cpu(result: Dict[str, Any]) -> float:
    """CPU seconds of the count and vocabulary phases."""
    return result["phases"]["count"][1] + result["phases"]["vocabulary"][1]


def row_line(r: Dict[str, Any], first: Dict[str, Any]) -> str:
    """One printed row; us/value: count + vocabulary CPU above ``first``'s, per extra distinct value."""
    extra = r["distinct"] - first["distinct"]
    per = (counted_cpu(r) - counted_cpu(first)) / extra * 1e6 if extra else float("nan")
    (cw, cc), (vw, vc), (ww, wc) = (r["phases"][k] for k in ("count", "vocabulary", "write"))
    return (
        f"{r['distinct']:>10,} {r['workers']:>7} {cw:8.2f} {cc:6.1f} {vw:8.2f} {vc:6.1f} {ww:8.2f} {wc:6.1f} "
        f"{r['seconds']:8.2f} {r['cpu_seconds']:7.1f} {r['peak_rss_mb']:8.0f} {per:9.3f}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=3_500_000, help="rows of every input (train: 6/7 of them)")
    p.add_argument(
        "--distinct",
        type=int,
        nargs="+",
        default=[100_000, 1_000_000, 2_000_000, 3_000_000],
        help="distinct values of C1 (capped by the train rows)",
    )
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--workdir", default=None, help="where inputs and outputs go (default: a temp dir)")
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        src, out, workers = args._child
        child(Path(src), Path(out), int(workers))
        return 0
    sys.path.insert(0, str(REPO / "benchmarks"))
    print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.rows:,} rows per input")
    print(
        f"{'distinct':>10} {'workers':>7} {'count s':>8} {'cpu':>6} {'vocab s':>8} {'cpu':>6} {'write s':>8} {'cpu':>6} "
        f"{'total s':>8} {'cpu s':>7} {'peak MB':>8} {'us/value':>9}"
    )
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        base: Dict[int, Dict[str, Any]] = {}
        for distinct in sorted(args.distinct):
            src = Path(tmp) / f"kaggle_{distinct}.tsv"
            write_tsv(src, np.arange(args.rows) % distinct)  # row i holds value i mod distinct
            train_distinct = min(distinct, train_rows(args.rows))
            for workers in args.workers:
                r = measure(src, Path(tmp) / "out", workers)
                if r["vocabulary"] != train_distinct:
                    raise RuntimeError(f"C1's vocabulary holds {r['vocabulary']:,} values, {train_distinct:,} expected")
                r.update(distinct=train_distinct, workers=workers)
                print(row_line(r, base.setdefault(workers, r)), flush=True)
            src.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
