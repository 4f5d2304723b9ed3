"""Checkpoints written in the background (--checkpoint-mode async, dcp.async_save on a gloo group
of its own) keep every resume guarantee of the synchronous ones (2 gloo ranks): the same final
weights, and a rank killed after an async save resumes bit-identical to an uninterrupted run."""

import json
from pathlib import Path

from dist_launch import torchrun
import test_fault_tolerance
from test_fault_tolerance import ARGS, TRAIN, _assert_identical, _final_state

# The fault-tolerance run's module-scoped fixtures, bound by assignment: pytest finds them by name in
# this module, and an import of them would read to a linter as redefined by each test's parameter.
data, uninterrupted = test_fault_tolerance.data, test_fault_tolerance.uninterrupted

ASYNC = ["--checkpoint-mode", "async", "--log-every", "1"]


def test_async_checkpoints_equal_sync_ones(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "async"
    torchrun(TRAIN, ["--data", str(data), "--run-dir", str(run), *ARGS, *ASYNC])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000006", "step-00000008"]
    _assert_identical(_final_state(uninterrupted, tmp_path), _final_state(run, tmp_path))


def test_killed_rank_after_async_save_resumes_bit_identical(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "async-faulty"
    proc = torchrun(
        TRAIN,
        ["--data", str(data), "--run-dir", str(run), *ARGS, *ASYNC],
        launcher_args=["--max-restarts", "1"],
        env_extra={"MLET_FAULT": "step:5:1"},
    )
    log = proc.stdout + proc.stderr
    assert "[fault injection] rank 1 exits at step 5" in log
    resumed = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["checkpoint"] for e in resumed if e["event"] == "resume"] == ["step-00000004"]
    _assert_identical(_final_state(uninterrupted, tmp_path), _final_state(run, tmp_path))
