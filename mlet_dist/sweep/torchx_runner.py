"""Launch the runs of a sweep as torchx apps (launch.scheduler: local_cwd, slurm, kubernetes, ...).

The same rules as the local torchrun launcher (runner.py), through torchx's Python API:

* Resumable: a run whose dir holds ``summary.json`` is done and never submitted. Each submission
  saves its app handle in the run dir (``torchx_app.json``); on the next ``mlet-sweep`` a run whose
  saved app is still queued or running is waited for, not submitted twice, and one whose app
  failed, was cancelled or is unknown to the scheduler is submitted again (train.py resumes from
  its checkpoints).
* At most ``launch.max_concurrent`` apps at once (default: the cpu budget for local schedulers,
  no limit on a cluster, whose queue decides), polled every ``launch.poll_s`` until they end.
* A failed run is reported (``launch.log`` names its app and, for local_cwd, holds its output) and
  does not stop the others; a finished run loses its checkpoints unless keep_checkpoints.
* On Ctrl-C (or an exception) local_cwd apps end with this process (torchx's local scheduler
  kills them); cluster apps keep running, and the next ``mlet-sweep`` waits for them.
"""

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from mlet_dist.sweep.config import SweepConfig
from mlet_dist.sweep.run_state import (
    LAUNCH_LOG,
    RunStatus,
    ensure_data,
    initial_statuses,
    is_done,
    prune_checkpoints,
    tail,
    write_manifest,
)
from mlet_dist.sweep.torchx_app import (
    LOCAL_SCHEDULERS,
    build_app,
    check_scheduler,
    component_module,
    flags_of,
    in_repo_root,
    request_text,
    scheduler_cfg,
)

APP_FILE = "torchx_app.json"  # the run's last submission: {"handle", "scheduler", "submitted", "log_dir"}


def saved_app(run_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        payload = json.loads((run_dir / APP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and isinstance(payload.get("handle"), str) else None


def save_app(run_dir: Path, handle: str, scheduler: str, log_dir: Optional[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "handle": handle,
        "scheduler": scheduler,
        "log_dir": log_dir,
        "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = run_dir / f".{APP_FILE}.tmp"
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(run_dir / APP_FILE)


def app_state(runner: Any, handle: str) -> Optional[Any]:
    """torchx's AppStatus of ``handle``, or None when the scheduler does not know the app (a local_cwd
    app of an earlier process, a job purged from the cluster's records)."""
    try:
        return runner.status(handle)
    except Exception:  # noqa: BLE001 - an unreadable handle, a scheduler query that failed
        return None


def _slots(cfg: SweepConfig, pending: int) -> int:
    if cfg.launch.max_concurrent is not None:
        return int(cfg.launch.max_concurrent)
    return cfg.launch.parallel_runs if cfg.launch.scheduler in LOCAL_SCHEDULERS else max(1, pending)


def _poll_s(cfg: SweepConfig) -> float:
    if cfg.launch.poll_s is not None:
        return float(cfg.launch.poll_s)
    return 2.0 if cfg.launch.scheduler in LOCAL_SCHEDULERS else 30.0


def _append_log(st: RunStatus, text: str) -> None:
    st.run_dir.mkdir(parents=True, exist_ok=True)
    with open(st.run_dir / LAUNCH_LOG, "a") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def _copy_local_output(st: RunStatus, log_dir: Optional[str]) -> None:
    """local_cwd: append the app's replica logs to launch.log (what the torchrun launcher keeps)."""
    if not log_dir:
        return
    for path in sorted(Path(log_dir).glob("*/*/stdout.log")) + sorted(Path(log_dir).glob("*/*/stderr.log")):
        _append_log(st, f"--- {path}\n" + path.read_text(errors="replace"))


def run_sweep_torchx(
    cfg: SweepConfig, dry_run: bool = False, log: Callable[[str], None] = print, runner: Optional[Any] = None
) -> List[RunStatus]:
    """Submit every missing run of ``cfg`` as a torchx app and wait for them; returns the status of
    all runs of the grid. ``runner``: a torchx Runner to use (default: torchx's get_runner())."""
    sched = cfg.launch.scheduler
    check_scheduler(sched)
    module = component_module()
    run_cfg = scheduler_cfg(cfg)
    statuses = initial_statuses(cfg)
    pending = [s for s in statuses if s.status == "pending"]
    apps = {s.run.run_id: build_app(cfg, s.run, module) for s in pending}  # bad options fail before any submit
    slots = _slots(cfg, len(pending))
    lc = cfg.launch
    log(
        f"[sweep] {cfg.name}: {len(statuses)} runs, {len(statuses) - len(pending)} already done, "
        f"{len(pending)} to run on torchx scheduler {sched}, {slots} at a time ({lc.nodes} node(s) x "
        f"{lc.procs_per_node} process(es) x {lc.threads_per_rank} thread(s) each)"
    )
    from torchx.runner import get_runner

    own = runner is None
    runner = runner if runner is not None else get_runner()
    active: Dict[str, tuple] = {}  # run id -> (status, handle, start time, local log dir)
    try:
        if dry_run:
            for s in pending:
                with in_repo_root():
                    info = runner.dryrun(apps[s.run.run_id], sched, cfg=run_cfg)
                log(f"--- {s.run.run_id}: {sched} request ---\n{request_text(info)}")
            return statuses
        if pending:
            ensure_data(cfg, log)
        commands = {s.run.run_id: flags_of(apps[s.run.run_id]) for s in pending}
        write_manifest(cfg, statuses, commands)
        queue: List[RunStatus] = []
        for st in pending:
            saved = saved_app(st.run_dir)
            state = app_state(runner, saved["handle"]) if saved else None
            if saved and state is not None and not state.is_terminal():
                st.app_handle = saved["handle"]
                active[st.run.run_id] = (st, saved["handle"], time.monotonic(), saved.get("log_dir"))
                log(
                    f"[sweep] waiting {st.run.run_id}: its app {saved['handle']} is {state.state.name} "
                    "(submitted before; not submitted again)"
                )
                continue
            if saved:
                why = state.state.name if state is not None else "unknown to the scheduler"
                log(f"[sweep] resubmit {st.run.run_id}: its app {saved['handle']} is {why}")
            queue.append(st)
        poll_s = _poll_s(cfg)
        while queue or active:
            while queue and len(active) < slots:
                st = queue.pop(0)
                with in_repo_root():
                    info = runner.dryrun(apps[st.run.run_id], sched, cfg=run_cfg)
                    handle = runner.schedule(info)
                log_dir = getattr(info.request, "log_dir", None) if sched in LOCAL_SCHEDULERS else None
                save_app(st.run_dir, handle, sched, log_dir)
                _append_log(st, f"[sweep] submitted as torchx app {handle}")
                st.app_handle = handle
                active[st.run.run_id] = (st, handle, time.monotonic(), log_dir)
                log(f"[sweep] submit {st.run.run_id}: {handle}")
                write_manifest(cfg, statuses, commands)
            time.sleep(poll_s)
            for run_id, (st, handle, t0, log_dir) in list(active.items()):
                elapsed = time.monotonic() - t0
                state = app_state(runner, handle)
                if state is not None and not state.is_terminal():
                    if lc.timeout_s is None or elapsed <= lc.timeout_s:
                        continue
                    runner.cancel(handle)
                    st.status = "timeout"
                del active[run_id]
                st.seconds = elapsed
                name = state.state.name if state is not None else "UNKNOWN"
                if st.status != "timeout":
                    st.status = "ok" if name == "SUCCEEDED" and is_done(st.run_dir) else "failed"
                _append_log(
                    st,
                    f"[sweep] torchx app {handle}: {name}"
                    + (f" ({state.msg})" if state is not None and state.msg else ""),
                )
                _copy_local_output(st, log_dir)
                if st.status != "ok":
                    if name == "SUCCEEDED":
                        _append_log(
                            st,
                            f"[sweep] the app succeeded but {st.run_dir}/summary.json is missing: "
                            "is launch.job_runs_dir the same directory as runs_dir?",
                        )
                    if not log_dir:
                        _append_log(st, f"[sweep] its logs: torchx log {handle}")
                    st.error = tail(st.run_dir / LAUNCH_LOG)
                elif not lc.keep_checkpoints:
                    prune_checkpoints(st.run_dir)
                log(
                    f"[sweep] {st.status:7s} {run_id} ({elapsed:.0f} s, app {name})"
                    + (f": see {st.run_dir / LAUNCH_LOG}" if st.status != "ok" else "")
                )
                write_manifest(cfg, statuses, commands)
    finally:
        for st, handle, _, _ in active.values():
            st.status = "pending"
            if sched not in LOCAL_SCHEDULERS:
                log(f"[sweep] {st.run.run_id}: app {handle} keeps running; the next mlet-sweep waits for it")
        if own:
            runner.close()  # local schedulers end their apps here
        if not dry_run:
            write_manifest(cfg, statuses, {s.run.run_id: flags_of(apps[s.run.run_id]) for s in pending})
    return statuses
