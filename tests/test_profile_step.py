"""benchmarks/profile_step.py (issue 29 item 1) runs end to end and tables MLET against stock,
with MLET's own lookup and projection as labelled regions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_profile_tables_mlet_against_stock_by_op(tmp_path: Path) -> None:
    out = tmp_path / "profile.md"
    run = subprocess.run(
        [
            sys.executable,
            "benchmarks/profile_step.py",
            "--ranks",
            "1",
            "--tables",
            "3",
            "--rows",
            "50",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--rounds",
            "1",
            "--warmup",
            "1",
            "--top",
            "500",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in out.read_text().splitlines() if line.startswith("| `")}
    for region in (
        "`mlet.lookup`",
        "`mlet.project`",
        "`step.forward`",
        "`step.backward`",
        "`fbgemm::split_embedding_codegen_forward_cpu`",
    ):
        assert region in rows, f"{region} missing from the table:\n{out.read_text()}"
    assert "| unprofiled median |" in out.read_text()
