"""What both sweep launchers share (local torchrun in runner.py, torchx in torchx_runner.py): a
run's status, "done" = its run dir holds summary.json, the train.py flags of a grid point, the
sweep manifest, the dataset a `prepare` section makes, and the pruning of finished runs.

Both launchers make the runs write the same files, so the report is made the same way after
either one."""

import json
import shutil
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
    app_handle: str = ""  # torchx launches: the app this run was (last) submitted as

    def to_json(self) -> Dict[str, object]:
        out: Dict[str, object] = {
            "run_id": self.run.run_id,
            "run_dir": str(self.run_dir),
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "returncode": self.returncode,
            "error": self.error,
        }
        if self.app_handle:  # local torchrun sweeps keep their manifest and report.json as before
            out["app_handle"] = self.app_handle
        return out


def is_done(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def initial_statuses(cfg: SweepConfig) -> List[RunStatus]:
    return [RunStatus(r, cfg.run_dir(r), "done" if is_done(cfg.run_dir(r)) else "pending") for r in cfg.runs()]


def train_flags(cfg: SweepConfig, run: RunSpec, data: str, run_dir: str) -> List[str]:
    """train.py's arguments for one grid point (``data``/``run_dir`` as the job sees them)."""
    extra = ["--save-predictions"] if cfg.save_predictions else []
    extra += ["--diagnostics"] if cfg.diagnostics else []
    return [
        "--data",
        data,
        "--run-dir",
        run_dir,
        "--no-progress",
        *run.train_args(),
        *cfg.train_args,
        *cfg.arch_args.get(run.arch, []),
        *cfg.model_args.get(run.model, []),
        *extra,
    ]


def ensure_data(cfg: SweepConfig, log: Callable[[str], None] = print) -> None:
    """Generate the dataset described by ``prepare`` when ``data`` has none yet."""
    if (cfg.data / "meta.json").is_file():
        return
    if not cfg.prepare:
        raise FileNotFoundError(f"no prepared dataset at {cfg.data} (and no `prepare` section to make one)")
    from data_prep.generate.planted import PlantedSpec, generate_planted

    spec_kw = dict(cfg.prepare["planted"] or {})
    if "cardinality" in spec_kw:
        c = spec_kw["cardinality"]
        spec_kw["cardinality"] = tuple(c) if isinstance(c, (list, tuple)) else (int(c),)
    spec = PlantedSpec(**spec_kw)
    log(f"[sweep] preparing planted dataset at {cfg.data} ({spec.rows:,} rows)")
    result = generate_planted(cfg.data, spec)
    log(f"[sweep] Bayes-optimal AUC: {result.meta['bayes_auc']}")


def write_manifest(cfg: SweepConfig, statuses: List[RunStatus], commands: Dict[str, List[str]]) -> Path:
    """runs_dir/sweep.json: the config, each run's status and the command (or train.py flags) it ran."""
    assert cfg.runs_dir is not None
    cfg.runs_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.runs_dir / MANIFEST
    payload = {"config": cfg.to_json(), "runs": [s.to_json() for s in statuses], "commands": commands}
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def prune_checkpoints(run_dir: Path) -> None:
    """A finished run no longer needs its checkpoints (a k=128 Criteo model is ~17 GB per copy)."""
    for name in CHECKPOINT_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
