"""Small train.py runs on the shipped Criteo sample, shared by the end-to-end training tests: the
prepared sample, the flags of a quick run and one train.py process without a launcher. One
definition, so that a renamed flag or a new launcher variable is changed in one place."""

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from data_prep.criteo import prepare_criteo_kaggle
from dist_launch import ROOT

TRAIN = ROOT / "mlet_dist" / "train.py"
SAMPLE = ROOT / "data_prep" / "samples" / "criteo_sample.tsv"
# What torchrun gives a worker: a process without them is a 1-rank job that picks no rendezvous.
LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_USE_AGENT_STORE",
)


def prepared_sample(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """The Criteo sample prepared in process (for a module-scoped fixture): the data of a test
    that is about training, not about mlet-prep."""
    out = tmp_path_factory.mktemp(name) / "criteo"
    prepare_criteo_kaggle(SAMPLE, out)
    return out


def prepared_sample_by_cli(tmp_path_factory: pytest.TempPathFactory, name: str, *flags: str) -> Path:
    """The Criteo sample prepared by `python -m data_prep.cli criteo-kaggle`, as a runbook does it."""
    out = tmp_path_factory.mktemp(name) / "criteo"
    cmd = [sys.executable, "-m", "data_prep.cli", "criteo-kaggle", str(SAMPLE), str(out), "--overwrite", *flags]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=120)
    return out


def quick_args(
    bottom_mlp: str, top_mlp: str, max_eval_batches: int, max_train_batches: Optional[int] = None
) -> List[str]:
    """The flags of a run that takes seconds: 64-row batches, a few of them, small MLPs, no progress bar.
    Without ``max_train_batches`` the test passes its own --max-train-batches."""
    train = ["--max-train-batches", str(max_train_batches)] if max_train_batches is not None else []
    return [
        "--batch-size",
        "64",
        *train,
        "--max-eval-batches",
        str(max_eval_batches),
        "--no-progress",
        "--bottom-mlp",
        bottom_mlp,
        "--top-mlp",
        top_mlp,
    ]


def data_and_run_dir(data: Path, run_dir: Path, *flags: str) -> List[str]:
    """train.py's argv for ``data`` into ``run_dir``, then ``flags``."""
    return ["--data", str(data), "--run-dir", str(run_dir), *flags]


def one_process_env(**extra: str) -> Dict[str, str]:
    """This environment without a launcher's variables, 1 OpenMP thread, the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra})
    return env


def train_one_process(
    args: Sequence[str], timeout: float = 300, env_extra: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """train.py as one plain process, no launcher: a 1-rank job. The caller checks the exit code."""
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=ROOT,
        env=one_process_env(**(env_extra or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A port the OS has just handed out, for a rendezvous that a test sets up by hand."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
