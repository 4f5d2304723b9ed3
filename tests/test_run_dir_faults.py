"""The run dir and the CLI's own inputs (issue 32): --no-resume starts a clean run dir, one job
per run dir, and the per-attempt error record. 1-rank train.py runs without a launcher."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from dist_launch import ROOT
from training_runs import TRAIN, free_port, one_process_env, prepared_sample, quick_args, train_one_process

QUICK = quick_args(bottom_mlp="16,16", top_mlp="16,1", max_eval_batches=2)
QUICK += ["--sharding", "table_wise", "--no-collapse"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_sample(tmp_path_factory, "run_dir_faults")


def lines_starting(proc: subprocess.CompletedProcess, prefix: str) -> List[str]:
    return [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith(prefix)]


def checkpoint_steps(run_dir: Path) -> List[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))


def test_no_resume_moves_the_earlier_run_aside_so_a_rerun_resumes_the_new_one(data: Path, tmp_path: Path) -> None:
    """Before: --no-resume over a 20-step run kept its step-15/20 checkpoints beside the new run's
    step-12, and the next plain rerun resumed the old step 20 and reported its AUC as its own."""
    run = tmp_path / "run"
    ckpt = ["--checkpoint-every", "5", "--keep-checkpoints", "3"]
    first = train_one_process(["--data", str(data), "--run-dir", str(run), *QUICK, *ckpt, "--max-train-batches", "20"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert checkpoint_steps(run) == [10, 15, 20]

    fresh = train_one_process(
        ["--data", str(data), "--run-dir", str(run), *QUICK, *ckpt, "--max-train-batches", "12", "--no-resume"]
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert checkpoint_steps(run) == [5, 10, 12]  # the new run's own, nothing older
    previous = sorted(run.glob("previous-*"))
    assert len(previous) == 1 and checkpoint_steps(previous[0]) == [10, 15, 20]  # kept, not deleted
    assert (previous[0] / "summary.json").is_file() and (previous[0] / "metrics.jsonl").is_file()
    assert lines_starting(fresh, "warning: --no-resume") == [
        f"warning: --no-resume: moved the earlier run's files in {run} to {previous[0]}"
    ]
    assert "resuming from" not in fresh.stdout

    rerun = train_one_process(["--data", str(data), "--run-dir", str(run), *QUICK, *ckpt, "--max-train-batches", "12"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'step-00000012'}" in rerun.stdout
    assert "step 12" in rerun.stdout and "step 20" not in rerun.stdout


def test_starts_fresh_on_a_first_attempt_only() -> None:
    """A torchrun restart of a --no-resume job resumes its own first attempt's checkpoints."""
    from mlet_dist.training.run_dir import starts_fresh

    assert starts_fresh(resume=False, environ={})
    assert starts_fresh(resume=False, environ={"TORCHELASTIC_RESTART_COUNT": "0"})
    assert not starts_fresh(resume=False, environ={"TORCHELASTIC_RESTART_COUNT": "1"})
    assert not starts_fresh(resume=True, environ={})


HOLD = """
import sys, time
from pathlib import Path
from mlet_dist.training.run_dir import lock_run_dir
lock_run_dir(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process holding the run dir the way a training job's rank 0 does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, env=one_process_env(), stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_second_job_on_a_held_run_dir_stops_at_start_naming_the_holder(data: Path, tmp_path: Path) -> None:
    """Before: two jobs on one --run-dir interleaved metrics.jsonl and mixed config.json and
    checkpoints. The second job now stops with one line; --no-resume does not touch the holder's files."""
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        (run / "metrics.jsonl").write_text("{}\n")  # the holder's files
        for extra in ([], ["--no-resume"]):
            proc = train_one_process(
                ["--data", str(data), "--run-dir", str(run), *QUICK, "--max-train-batches", "2", *extra]
            )
            assert proc.returncode == 2, proc.stderr[-3000:]
            errors = lines_starting(proc, "error:")
            assert len(errors) == 1 and errors[0].startswith(
                f"error: run dir {run} is in use by another training job (pid {holder.pid} on host "
            ), errors
            assert "Traceback" not in proc.stderr
            assert sorted(p.name for p in run.iterdir()) == [".lock", "metrics.jsonl"]  # nothing written or moved
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_jobs_lock_does_not_block_the_next_job(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _hold_lock(run)
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup: the lock file stays, the kernel drops the lock
    holder.wait()
    assert (run / ".lock").is_file()
    proc = train_one_process(["--data", str(data), "--run-dir", str(run), *QUICK, "--max-train-batches", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.fullmatch(r"pid \d+ on host .+", (run / ".lock").read_text().strip())
    assert str(holder.pid) not in (run / ".lock").read_text()


def _epoch_val_aucs(run_dir: Path) -> dict:
    import json

    events = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["val"]["auc"] for e in events if e["event"] == "epoch"}


def test_extending_a_finished_run_keeps_its_best_point(data: Path, tmp_path: Path) -> None:
    """Before: --epochs 2 after a finished 1-epoch run failed with FileNotFoundError on
    best_model/step-10 (the old last point, never snapshotted) on every rerun."""
    import json

    run = tmp_path / "run"
    # Learning rates high enough that the second epoch is worse on this seed: the best point is then
    # the old last one, the case that had no snapshot (asserted below, so a change that makes the
    # case vanish fails loudly instead of passing vacuously).
    args = [
        "--data",
        str(data),
        "--run-dir",
        str(run),
        *QUICK,
        "--max-train-batches",
        "10",
        "--seed",
        "1",
        "--dense-lr",
        "0.02",
        "--embedding-lr",
        "1",
        "--mlet-init",
        "paper",
    ]  # the init the case was found with
    assert train_one_process(args).returncode == 0
    for attempt in range(2):  # the extension, then a rerun of the extended, finished run
        proc = train_one_process([*args, "--epochs", "2"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((run / "summary.json").read_text())
        aucs = _epoch_val_aucs(run)
        assert sorted(aucs) == [10, 20]
        assert aucs[10] > aucs[20], aucs  # the precondition: step 10 must be restored
        assert summary["selected_step"] == 10 and summary["trained"]["val"]["auc"] == aucs[10]
        assert (run / "best_model" / "step-10" / ".metadata").is_file()

    import shutil

    shutil.rmtree(run / "best_model")  # e.g. a sweep pruned it; then the run is extended again
    proc = train_one_process([*args, "--epochs", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    aucs = _epoch_val_aucs(run)
    assert max(aucs, key=aucs.__getitem__) == 10, aucs  # the precondition: step 10 is still the best
    warnings = lines_starting(proc, "warning: the best point's snapshot")
    assert len(warnings) == 1 and "the selected model is the last point (step 30)" in warnings[0], proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selected_step"] == 30 and summary["selected_epoch"] == 2
    assert summary["trained"]["val"]["auc"] == pytest.approx(aucs[30], abs=1e-9)


def test_every_failing_plain_torchrun_launch_prints_its_error_line(data: Path, tmp_path: Path) -> None:
    """Plain torchrun (no --standalone, no --rdzv-id) names every launch "none": before, the second
    failing launch into the same run dir found errors/first-none-0 and printed no error line."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        str(TRAIN),
        "--data",
        str(data),
        "--run-dir",
        str(run),
        *QUICK,
        "--max-train-batches",
        "6",
    ]
    for launch in range(2):
        env = one_process_env(MLET_FAULT="step:3:1:raise")
        proc = subprocess.run(
            [*cmd[:3], f"--master-port={free_port()}", *cmd[3:]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode != 0
        errors = lines_starting(proc, "error:")
        assert len(errors) == 1 and errors[0].startswith("error: InjectedFault: injected fault on rank 1 at step 3"), (
            launch,
            proc.stderr[-3000:],
        )
    assert len(list((run / "errors").glob("first-none-0-*"))) == 2
