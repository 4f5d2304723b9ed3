"""Launch a script (train.py, a CLI) under torchrun with N gloo ranks on this box: for the tests of
the launch path itself. A test function that needs several ranks runs them with tests/multiprocess.py."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]


def torchrun(
    script: Path,
    args: List[str],
    nproc: int = 2,
    timeout: int = 600,
    launcher_args: Sequence[str] = (),
    env_extra: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env_extra or {}))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *launcher_args,
        str(script),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def torchx_run(
    component: Sequence[str],
    script_args: Sequence[str],
    log_dir: Optional[Path] = None,
    timeout: int = 600,
    env_extra: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """`torchx run -s local_cwd [-cfg log_dir=LOG_DIR] COMPONENT... -- SCRIPT_ARGS...`, as a runbook
    types it: from the repo root (so that .torchxconfig applies), with the venv's bin first on PATH
    (the replicas' torchrun). The caller checks the exit code: some tests expect a failed job."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **(env_extra or {})}
    cfg = ["-cfg", f"log_dir={log_dir}"] if log_dir is not None else []
    cmd = [str(bin_dir / "torchx"), "run", "-s", "local_cwd", *cfg, *component, "--", *script_args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
