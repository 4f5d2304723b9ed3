"""benchmarks/bench_prep.py runs from a fresh checkout: every row printed, wN pinned to N cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_prep_prints_every_row_and_pins_workers_to_cores(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_prep.py",
            "--sizes",
            "2",
            "--workers",
            "1",
            "2",
            "--repeats",
            "2",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr
    assert "medians of 2 interleaved runs" in run.stdout
    rows = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[1] in ("pyarrow", "mlet-prep"):
            name = parts[1] if parts[1] == "pyarrow" else f"{parts[1]} {parts[2]}"
            rows[name] = parts[2:] if parts[1] == "pyarrow" else parts[3:]
    assert set(rows) == {"pyarrow", "mlet-prep w1", "mlet-prep w2"}, run.stdout
    cores = len(os.sched_getaffinity(0))
    assert int(rows["mlet-prep w1"][0]) == 1  # one core, not one process with threads on all cores
    assert int(rows["mlet-prep w2"][0]) == min(2, cores)
    assert rows["mlet-prep w1"][-2] == "1.00x"  # vs w1
    for values in rows.values():
        seconds, mb_per_s = float(values[1]), float(values[2])
        assert seconds > 0 and mb_per_s > 0
