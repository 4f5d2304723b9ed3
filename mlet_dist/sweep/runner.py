"""Launch the runs of a sweep: each a torchrun job in its own run dir, several at a time.

* Resumable: a run whose dir holds ``summary.json`` is done and skipped. Any other run is
  (re)launched into its dir; train.py resumes from a checkpoint there if it has one, otherwise it
  starts again (metrics.jsonl records each attempt).
* Parallel within a CPU budget: ``launch.cpu_budget // (world_size * threads_per_rank)`` jobs at
  once, each rank with ``OMP_NUM_THREADS = threads_per_rank``.
* A failed run is reported (its ``launch.log`` keeps the output) and does not stop the others.
* Disk: a run that finished has its ``checkpoints/`` and ``best_model/`` removed (a k=128 Criteo
  model is ~17 GB per copy) unless ``launch.keep_checkpoints`` is true.
* Each job is started in its own session; on Ctrl-C (or an exception) the runner ends the
  process groups it started, and only those.
* ``launch.scheduler: local_cwd | slurm | kubernetes | ...`` submits each run as a torchx app
  instead (torchx_runner.py); the same rules hold, and the runs write the same files.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

from mlet_dist.sweep.config import RunSpec, SweepConfig
from mlet_dist.sweep.run_state import (  # noqa: F401  (re-exported: the runner's public names)
    CHECKPOINT_DIRS,
    LAUNCH_LOG,
    MANIFEST,
    ROOT,
    TRAIN_SCRIPT,
    RunStatus,
    ensure_data,
    initial_statuses,
    is_done,
    prune_checkpoints,
    tail,
    train_flags,
)
from mlet_dist.sweep.run_state import write_manifest as _write_manifest
from mlet_dist.sweep.torchx_runner import run_sweep_torchx


def command_for(cfg: SweepConfig, run: RunSpec) -> List[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={cfg.launch.world_size}",
        str(TRAIN_SCRIPT),
        *train_flags(cfg, run, str(cfg.data.resolve()), str(cfg.run_dir(run).resolve())),
    ]


def _env(cfg: SweepConfig) -> Dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(cfg.launch.threads_per_rank)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    if not cfg.launch.tensorboard:
        env["MLET_TENSORBOARD"] = "0"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # not a nested job
        env.pop(var, None)
    return env


def write_manifest(cfg: SweepConfig, statuses: List[RunStatus]) -> Path:
    return _write_manifest(cfg, statuses, {s.run.run_id: command_for(cfg, s.run) for s in statuses})


def run_sweep(
    cfg: SweepConfig, dry_run: bool = False, log: Callable[[str], None] = print, poll_s: float = 0.5
) -> List[RunStatus]:
    """Run every missing run of ``cfg``; returns the status of all runs of the grid.

    With ``launch.scheduler`` other than torchrun, each run is a torchx app (torchx_runner)."""
    if cfg.launch.scheduler != "torchrun":
        return run_sweep_torchx(cfg, dry_run=dry_run, log=log)
    statuses = initial_statuses(cfg)
    pending = [s for s in statuses if s.status == "pending"]
    slots = cfg.launch.parallel_runs
    log(
        f"[sweep] {cfg.name}: {len(statuses)} runs, {len(statuses) - len(pending)} already done, "
        f"{len(pending)} to run, {slots} at a time ({cfg.launch.world_size} rank(s) x "
        f"{cfg.launch.threads_per_rank} thread(s) each)"
    )
    if dry_run:
        for s in pending:
            log("  " + " ".join(command_for(cfg, s.run)))
        return statuses
    if pending:
        ensure_data(cfg, log)
    write_manifest(cfg, statuses)
    env = _env(cfg)
    running: Dict[int, tuple] = {}  # pid -> (Popen, status, start time, log file)
    queue = list(pending)
    try:
        while queue or running:
            while queue and len(running) < slots:
                st = queue.pop(0)
                st.run_dir.mkdir(parents=True, exist_ok=True)
                logf = open(st.run_dir / LAUNCH_LOG, "ab")
                proc = subprocess.Popen(
                    command_for(cfg, st.run),
                    cwd=ROOT,
                    env=env,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                running[proc.pid] = (proc, st, time.monotonic(), logf)
                log(f"[sweep] start {st.run.run_id}")
            time.sleep(poll_s)
            for pid, (proc, st, t0, logf) in list(running.items()):
                elapsed = time.monotonic() - t0
                rc = proc.poll()
                if rc is None and cfg.launch.timeout_s is not None and elapsed > cfg.launch.timeout_s:
                    _end_group(proc)
                    rc = proc.wait()
                    st.status = "timeout"
                if rc is None:
                    continue
                logf.close()
                del running[pid]
                st.seconds, st.returncode = elapsed, rc
                if st.status != "timeout":
                    st.status = "ok" if rc == 0 and is_done(st.run_dir) else "failed"
                if st.status != "ok":
                    st.error = tail(st.run_dir / LAUNCH_LOG)
                elif not cfg.launch.keep_checkpoints:
                    prune_checkpoints(st.run_dir)
                log(
                    f"[sweep] {st.status:7s} {st.run.run_id} ({elapsed:.0f} s)"
                    + (f": see {st.run_dir / LAUNCH_LOG}" if st.status != "ok" else "")
                )
                write_manifest(cfg, statuses)
    finally:
        for proc, st, _, logf in running.values():
            _end_group(proc)
            proc.wait()
            logf.close()
            st.status = "pending"
        write_manifest(cfg, statuses)
    return statuses


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group this runner started for ``proc`` (torchrun and its ranks)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
