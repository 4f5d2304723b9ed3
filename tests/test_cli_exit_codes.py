"""User mistakes in every CLI: one line on stderr starting with "error:", exit status 2, no
traceback (issue 13); unexpected errors keep their traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "argv",
    [
        ["mlet-predict", "--serving", "/nonexistent/serving", "--data", "/nonexistent", "--out", "p.parquet"],
        ["mlet-collapse", "--run-dir", "/nonexistent/run", "--out", "/tmp/mlet-never-written"],
        ["mlet-prep", "criteo-kaggle", "/nonexistent.tsv", "/tmp/mlet-never-written"],
        ["mlet-train", "--data", "/nonexistent"],
    ],
)
def test_user_mistake_is_one_line_and_exit_2(argv: list, tmp_path: Path) -> None:
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert lines and "error:" in lines[0] and len(lines) <= 2, lines  # the error, at most a hint line
