"""The default run directory: named once per job, so that every rank writes into the same one.

A per-process timestamp differs between ranks that start in different seconds: rank 1 then
writes its checkpoint and best-model shards into another folder, and the serving export's
collectives wait forever for a peer that looks elsewhere. So the name is chosen by rank 0 after
the process group exists and broadcast to every rank.

Under torchelastic (torchrun --standalone, torchx) the name is the elastic run id, which stays
the same across `--max-restarts` attempts and scheduler requeues: a restarted job finds its own
checkpoints. Without one (a plain `python train.py`, torchrun without --rdzv-id) it is rank 0's
start time.
"""

import os
import re
import time
from pathlib import Path
from typing import Mapping, Optional

import torch.distributed as dist

RUNS_ROOT = Path("runs")


def default_run_name(environ: Mapping[str, str] = os.environ, now: Optional[float] = None) -> str:
    """`elastic run id` when torchelastic gave one (not torchrun's placeholder "none"), else a timestamp."""
    run_id = environ.get("TORCHELASTIC_RUN_ID", "").strip()
    if run_id and run_id != "none":
        return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now))


def agree_on_run_dir(given: Optional[Path]) -> Path:
    """`given` (--run-dir) as is; otherwise rank 0's default name, the same on every rank.

    Collective when no --run-dir was given: every rank of an initialized process group calls it.
    """
    if given is not None:
        return given
    choice = [str(RUNS_ROOT / default_run_name())]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    return Path(choice[0])
