"""A checkpoint write on a full disk (issue 32): the job's one error line is the cause ("No space
left on device"), not DCP's "CheckpointException ranks:dict_keys([0])" repr, and an error log
the same disk cannot hold is said instead of leaving an empty errors/rank0.log unexplained.

The disk is made full for real: DCP's shard file and the error log are symlinks to /dev/full."""

import subprocess
import sys
from pathlib import Path

import pytest

from dist_launch import ROOT

SCRIPT = """
import os, sys
from pathlib import Path
import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
from mlet_dist.training.failure import report_failure
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3])
dist.init_process_group("gloo", rank=0, world_size=1)
try:
    dcp.save({"w": torch.ones(1000)}, checkpoint_id=sys.argv[1])
except BaseException as err:
    sys.exit(report_failure(err, 0, 1, Path(sys.argv[2])))
sys.exit("saved: the disk was not full")
"""


@pytest.mark.parametrize("log_disk", ["full", "fine"])
def test_disk_full_checkpoint_is_one_line_naming_the_cause(log_disk: str, tmp_path: Path) -> None:
    checkpoint, run_dir = tmp_path / "step-4", tmp_path / "run"
    checkpoint.mkdir()
    (checkpoint / "__0_0.distcp").symlink_to("/dev/full")  # DCP's one shard file of rank 0
    (run_dir / "errors").mkdir(parents=True)
    if log_disk == "full":
        (run_dir / "errors" / "rank0.log").symlink_to("/dev/full")
    port = str(29600 + (hash(str(tmp_path)) % 200))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(checkpoint), str(run_dir), port],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert line.startswith(
        "error: a checkpoint write failed on rank(s) [0]: OSError: [Errno 28] No space left on device"
    ), line
    assert "CheckpointException" not in line and "Traceback" not in proc.stderr
    if log_disk == "full":
        assert line.endswith("; no traceback log (No space left on device)"), line
    else:
        assert line.endswith(f"; full traceback in {run_dir / 'errors' / 'rank0.log'}"), line
        assert "No space left on device" in (run_dir / "errors" / "rank0.log").read_text()
