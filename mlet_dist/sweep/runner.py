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
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from mlet_dist.sweep.config import RunSpec, SweepConfig

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = ROOT / "mlet_dist" / "train.py"
LAUNCH_LOG = "launch.log"
CHECKPOINT_DIRS = ("checkpoints", "best_model")  # train.py's; only needed while a run is unfinished
MANIFEST = "sweep.json"


@dataclass
class RunStatus:
    run: RunSpec
    run_dir: Path
    status: str  # "done" (finished before), "ok" (finished now), "failed", "pending", "timeout"
    seconds: float = 0.0
    returncode: Optional[int] = None
    error: str = ""

    def to_json(self) -> Dict[str, object]:
        return {"run_id": self.run.run_id, "run_dir": str(self.run_dir), "status": self.status,
                "seconds": round(self.seconds, 3), "returncode": self.returncode, "error": self.error}


def is_done(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def command_for(cfg: SweepConfig, run: RunSpec) -> List[str]:
    extra = ["--save-predictions"] if cfg.save_predictions else []
    extra += ["--diagnostics"] if cfg.diagnostics else []
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={cfg.launch.world_size}", str(TRAIN_SCRIPT),
        "--data", str(cfg.data.resolve()), "--run-dir", str(cfg.run_dir(run).resolve()), "--no-progress",
        *run.train_args(), *cfg.train_args, *cfg.arch_args.get(run.arch, []),
        *cfg.model_args.get(run.model, []), *extra,
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


def ensure_data(cfg: SweepConfig, log: Callable[[str], None] = print) -> None:
    """Generate the dataset described by ``prepare`` when ``data`` has none yet."""
    if (cfg.data / "meta.json").is_file():
        return
    if not cfg.prepare:
        raise FileNotFoundError(f"no prepared dataset at {cfg.data} (and no `prepare` section to make one)")
    from data_prep.planted import PlantedSpec, generate_planted

    spec_kw = dict(cfg.prepare["planted"] or {})
    if "cardinality" in spec_kw:
        c = spec_kw["cardinality"]
        spec_kw["cardinality"] = tuple(c) if isinstance(c, (list, tuple)) else (int(c),)
    spec = PlantedSpec(**spec_kw)
    log(f"[sweep] preparing planted dataset at {cfg.data} ({spec.rows:,} rows)")
    result = generate_planted(cfg.data, spec)
    log(f"[sweep] Bayes-optimal AUC: {result.meta['bayes_auc']}")


def write_manifest(cfg: SweepConfig, statuses: List[RunStatus]) -> Path:
    assert cfg.runs_dir is not None
    cfg.runs_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.runs_dir / MANIFEST
    payload = {"config": cfg.to_json(), "runs": [s.to_json() for s in statuses],
               "commands": {s.run.run_id: command_for(cfg, s.run) for s in statuses}}
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def run_sweep(cfg: SweepConfig, dry_run: bool = False, log: Callable[[str], None] = print,
              poll_s: float = 0.5) -> List[RunStatus]:
    """Run every missing run of ``cfg``; returns the status of all runs of the grid."""
    statuses = [RunStatus(r, cfg.run_dir(r), "done" if is_done(cfg.run_dir(r)) else "pending") for r in cfg.runs()]
    pending = [s for s in statuses if s.status == "pending"]
    slots = cfg.launch.parallel_runs
    log(f"[sweep] {cfg.name}: {len(statuses)} runs, {len(statuses) - len(pending)} already done, "
        f"{len(pending)} to run, {slots} at a time ({cfg.launch.world_size} rank(s) x "
        f"{cfg.launch.threads_per_rank} thread(s) each)")
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
                proc = subprocess.Popen(command_for(cfg, st.run), cwd=ROOT, env=env, stdout=logf,
                                        stderr=subprocess.STDOUT, start_new_session=True)
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
                    st.error = _tail(st.run_dir / LAUNCH_LOG)
                elif not cfg.launch.keep_checkpoints:
                    for name in CHECKPOINT_DIRS:
                        shutil.rmtree(st.run_dir / name, ignore_errors=True)
                log(f"[sweep] {st.status:7s} {st.run.run_id} ({elapsed:.0f} s)"
                    + (f": see {st.run_dir / LAUNCH_LOG}" if st.status != "ok" else ""))
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
