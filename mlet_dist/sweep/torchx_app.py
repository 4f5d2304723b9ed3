"""One sweep run as a torchx app: launch/components.py:train with the run's train.py flags.

The component is the one `torchx run launch/components.py:train` uses (loaded from its path, as
torchx does), so a sweep run on Slurm or Kubernetes gets the same per-node checks, resources,
mounts and restarts as a hand-submitted job. torchx is imported only when a sweep uses it.
"""

import contextlib
import importlib.util
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional

from mlet_dist.sweep.config import COMPONENT_RESERVED, RunSpec, SweepConfig
from mlet_dist.sweep.run_state import ROOT, train_flags

COMPONENT_FILE = ROOT / "launch" / "components.py"
LOCAL_SCHEDULERS = ("local_cwd", "local_docker")  # apps run on this machine: the cpu budget applies


def component_module() -> ModuleType:
    """launch/components.py, imported from its file (it is not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("mlet_launch_components", COMPONENT_FILE)
    if spec is None or spec.loader is None or not COMPONENT_FILE.is_file():
        raise ValueError(f"launch.scheduler needs the torchx component {COMPONENT_FILE} (run from the repository)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_scheduler(name: str) -> None:
    from torchx.schedulers import get_scheduler_factories

    known = sorted(get_scheduler_factories())
    if name not in known:
        raise ValueError(f"launch.scheduler {name!r} is not a torchx scheduler; use torchrun or one of {known}")


def job_paths(cfg: SweepConfig, run: RunSpec) -> tuple:
    """(data, run dir) as the job sees them: launch.job_data / job_runs_dir, else the local paths."""
    lc = cfg.launch
    data = lc.job_data or str(cfg.data.resolve())
    run_dir = str(Path(lc.job_runs_dir) / run.run_id) if lc.job_runs_dir else str(cfg.run_dir(run).resolve())
    return data, run_dir


def app_name(cfg: SweepConfig, run: RunSpec) -> str:
    """{experiment}/{run} for torchx: the run id names the job (Slurm job name, Volcano job prefix)."""
    return f"{cfg.name}/{run.run_id}"


def component_kwargs(cfg: SweepConfig, run: RunSpec, train: Any) -> Dict[str, Any]:
    lc = cfg.launch
    params = inspect.signature(train).parameters
    unknown = sorted(k for k in lc.component if k not in params or k in COMPONENT_RESERVED)
    if unknown:
        options = sorted(k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in COMPONENT_RESERVED)
        raise ValueError(f"launch.component has unknown options {unknown}; launch/components.py:train takes {options}")
    env = {} if lc.tensorboard else {"MLET_TENSORBOARD": "0"}
    env.update({str(k): str(v) for k, v in (lc.component.get("env") or {}).items()})
    return {
        **lc.component,
        "j": f"{lc.nodes}x{lc.procs_per_node}",
        "threads": lc.threads_per_rank,
        "name": app_name(cfg, run),
        "env": env,
    }


def build_app(cfg: SweepConfig, run: RunSpec, module: Optional[ModuleType] = None) -> Any:
    """The torchx AppDef of one run (raises the component's LaunchError, a ValueError, on bad options)."""
    train = (module or component_module()).train
    data, run_dir = job_paths(cfg, run)
    return train(*train_flags(cfg, run, data, run_dir), **component_kwargs(cfg, run, train))


def scheduler_cfg(cfg: SweepConfig) -> Dict[str, Any]:
    """The run config: launch.scheduler_cfg over the repo's .torchxconfig section (what `torchx run`
    from the repo root would use); local_cwd logs go to <runs_dir>/torchx unless set."""
    from torchx.runner import config as torchx_config

    out: Dict[str, Any] = dict(cfg.launch.scheduler_cfg)
    if cfg.launch.scheduler in LOCAL_SCHEDULERS and "log_dir" not in out:
        assert cfg.runs_dir is not None
        out["log_dir"] = str((cfg.runs_dir / "torchx").resolve())
    torchx_config.apply(cfg.launch.scheduler, out, dirs=[str(ROOT)])  # only adds what is not set
    return out


@contextlib.contextmanager
def in_repo_root() -> Iterator[None]:
    """The component's paths (mlet_dist/train.py, .venv) are relative to the job's working dir,
    which local_cwd and slurm take from the submitting process: submit from the repo root."""
    with contextlib.chdir(ROOT):
        yield


def request_text(info: Any) -> str:
    """What the scheduler would be sent: the sbatch script (slurm), the Volcano Job YAML
    (kubernetes), the processes to start (local_cwd)."""
    request = info.request
    materialize = getattr(request, "materialize", None)
    if callable(materialize):
        text = materialize()
        if isinstance(text, str):
            return text
    return str(info)


def flags_of(app: Any) -> List[str]:
    """The role's command line (for the manifest)."""
    role = app.roles[0]
    return [role.entrypoint, *role.args]
