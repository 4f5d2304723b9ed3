"""mlet-prep under faults of the machine, not of the data: a disk it cannot write, staging dirs
left by killed runs, a huge bad value, a truncated download."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.cli import main as cli_main
from data_prep.writers import MAX_REJECT_RAW_BYTES

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data_prep" / "samples" / "criteo_sample.tsv"


def _lines(n: int) -> bytes:
    return b"".join(SAMPLE.read_bytes().splitlines(keepends=True)[:n])


def test_unwritable_output_is_one_line_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A file where the output's parent directory should be: the OSError every user can hit
    (also as root), the same code path as a read-only or full disk."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    assert cli_main(["criteo-kaggle", str(SAMPLE), str(blocker / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlet-prep: error:") and "not_a_dir" in err[0], err


def test_stale_staging_dirs_of_killed_runs_are_removed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    out = tmp_path / "out"
    stale = tmp_path / f"out.tmp-{dead_pid}"
    (stale / "train").mkdir(parents=True)
    live = tmp_path / f"out.tmp-{os.getppid()}"  # a live process's staging dir is not touched
    live.mkdir()
    other = tmp_path / "outer.tmp-1"  # another dataset's name
    other.mkdir()
    src = tmp_path / "in.tsv"
    src.write_bytes(_lines(300))
    assert cli_main(["criteo-kaggle", str(src), str(out)]) == 0
    assert not stale.exists() and live.exists() and other.exists()
    assert f"removed stale staging dir {stale}" in capsys.readouterr().err


def test_a_huge_bad_value_is_clipped_in_rejects(tmp_path: Path) -> None:
    src = tmp_path / "in.tsv"
    huge = b"1\t" + b"9" * 200_000 + b"\t" * 38 + b"\n"
    src.write_bytes(_lines(300) + huge)
    out = tmp_path / "out"
    assert cli_main(["criteo-kaggle", str(src), str(out)]) == 0
    rejects = (out / "rejects.tsv").read_bytes()
    assert len(rejects) < MAX_REJECT_RAW_BYTES + 500
    assert b"[truncated: 200,040 bytes in all]" in rejects


def test_truncated_gzip_is_a_warning_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in.tsv.gz"
    whole = gzip.compress(_lines(2000))
    src.write_bytes(whole[: len(whole) // 2])
    assert cli_main(["criteo-kaggle", str(src), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "mlet-prep: warning: 1 gzip stream(s) end early" in err
