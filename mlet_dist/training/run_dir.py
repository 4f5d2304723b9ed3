"""The run directory, written by rank 0 only:

    metrics.jsonl   one JSON object per event ("config", "train", "epoch", ...)
    summary.json    the final summary
    tensorboard/    TensorBoard event files mirroring the numeric fields of metrics.jsonl

TensorBoard tags (see `tensorboard_scalars`):
    train/loss                    per-step loss ("train" events, x = global step)
    train/epoch_loss              mean train loss of an epoch ("epoch" events)
    throughput/samples_per_s      global samples per second of an epoch
    val/auc, val/logloss, ...     every numeric field of a nested dict (val, test, timing, ...)
    timing/<name>                 any top-level numeric field ending in _ms or _s
                                  (e.g. embedding lookup / communication time where measured)

A restarted attempt (torchrun --max-restarts, a scheduler retry, a resubmission into the same
--run-dir) appends to metrics.jsonl (its "config" record carries restart_count) and, in
TensorBoard, replaces the curves of the failed attempt from its first step on (purge_step).

One job at a time: rank 0 holds an exclusive flock on ``RUN_DIR/.lock`` for the job's life (the
kernel drops it when the process dies, so a killed job never blocks the next one); a second job
on the same run dir stops at start with one line naming the holder. ``--no-resume`` moves what
an earlier run left into ``RUN_DIR/previous-<timestamp>/`` (under the lock), so the new run's
checkpoints are the only ones a later resume can find.
"""

import atexit
import fcntl
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, TypeGuard, Union

from mlet_dist.errors import UserError

TENSORBOARD_SUBDIR = "tensorboard"
LOCK_FILE = ".lock"
PREVIOUS_PREFIX = "previous-"
_NOT_SCALARS = {"step", "epoch", "time", "rows", "world_size", "restart_count"}
_RENAMED = {
    ("train", "loss"): "train/loss",
    ("epoch", "train_loss"): "train/epoch_loss",
    ("epoch", "samples_per_s"): "throughput/samples_per_s",
}


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by None: JSON has no NaN, and a metrics.jsonl
    line with ``NaN`` in it is not JSON (strict parsers, jq and pandas reject the file)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _is_number(value: Any) -> TypeGuard[Union[int, float]]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def tensorboard_scalars(event: str, fields: Mapping[str, Any]) -> Tuple[Optional[int], Dict[str, float]]:
    """(global step, {tag: value}) for one metrics.jsonl event; no step means nothing to plot."""
    step = fields.get("step")
    if not _is_number(step):
        return None, {}
    scalars: Dict[str, float] = {}
    for key, value in fields.items():
        if key in _NOT_SCALARS:
            continue
        if isinstance(value, Mapping):
            for sub, v in value.items():
                if _is_number(v) and sub not in _NOT_SCALARS:
                    scalars[f"{key}/{sub}"] = float(v)
        elif _is_number(value):
            if (event, key) in _RENAMED:
                tag = _RENAMED[(event, key)]
            elif key.endswith(("_ms", "_s")):
                tag = f"timing/{key}"
            else:
                tag = f"{event}/{key}"
            scalars[tag] = float(value)
    return int(step), scalars


class RunDirectory:
    def __init__(self, path: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._tb: Any = None
        self._tb_wanted = enabled and tensorboard and os.environ.get("MLET_TENSORBOARD", "1") != "0"
        self.purge_step: Optional[int] = None  # set by a resumed run before its first log
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_SUBDIR

    def _writer(self) -> Any:
        if self._tb is None and self._tb_wanted:
            self._tb_wanted = False  # one attempt: a missing package warns once, metrics.jsonl goes on
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                print(
                    f"warning: no TensorBoard event files ({e}); `pip install tensorboard` "
                    "(requirements/common.txt) to get them. metrics.jsonl is still written.",
                    file=sys.stderr,
                )
                return None
            # A previous attempt left event files: purge its curves from the step this attempt
            # starts at (the resumed checkpoint's step + 1, or 0 when it starts over).
            previous = self.tensorboard_dir.is_dir() and any(self.tensorboard_dir.glob("events.*"))
            purge = (self.purge_step or 0) if previous else None
            self._tb = SummaryWriter(str(self.tensorboard_dir), purge_step=purge)
            atexit.register(self.close)
        return self._tb

    def log(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": time.time(), **fields}
        if event == "config":
            record.setdefault("restart_count", int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        writer = self._writer()
        if writer is None:
            return
        if event == "config":
            writer.add_text("config", "```\n" + json.dumps(record, indent=2, default=str) + "\n```")
        step, scalars = tensorboard_scalars(event, fields)
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=step, walltime=record["time"])
        writer.flush()

    def write_json(self, name: str, payload: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")
        tmp.replace(self.path / name)
        writer = self._writer()
        if writer is not None:
            writer.add_text(name, "```\n" + json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n```")
            writer.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class RunDirBusy(UserError):
    """Another live job holds the run dir's lock."""


def _holder(lock: Path) -> str:
    """Who holds ``lock``, as its holder wrote it ("pid N on host H"), or "" when unreadable."""
    try:
        return lock.read_text().strip()
    except OSError:
        return ""


def lock_run_dir(run_dir: Path) -> int:
    """Take the run dir's exclusive lock for this process's life (returns its fd; closing it or
    the process ending releases it). RunDirBusy when a live process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _holder(lock)
        raise RunDirBusy(
            f"run dir {run_dir} is in use by another training job ({holder or 'holder unknown'}, lock "
            f"{lock}); wait for it to end, or give another --run-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
    return fd


def _earlier_entries(run_dir: Path) -> List[Path]:
    """What an earlier run left in ``run_dir``: all but the lock and earlier previous-* dirs."""
    return sorted(p for p in run_dir.iterdir() if p.name != LOCK_FILE and not p.name.startswith(PREVIOUS_PREFIX))


def move_previous_run(run_dir: Path, now: Optional[float] = None) -> Optional[Path]:
    """Move an earlier run's files into ``run_dir/previous-<timestamp>/`` (None: nothing there).
    Kept, not deleted: --no-resume on the wrong dir must not destroy a finished run."""
    entries = _earlier_entries(Path(run_dir))
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    dest = Path(run_dir) / f"{PREVIOUS_PREFIX}{stamp}"
    n = 1
    while dest.exists():  # two --no-resume starts in one second
        n += 1
        dest = Path(run_dir) / f"{PREVIOUS_PREFIX}{stamp}-{n}"
    dest.mkdir()
    for entry in entries:
        os.replace(entry, dest / entry.name)
    return dest


@dataclass
class RunDirClaim:
    """Rank 0's hold on the run dir (lock fd) and where --no-resume moved an earlier run."""

    lock_fd: Optional[int] = None
    moved_to: Optional[Path] = None

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _claim_on_main(run_dir: Path, fresh: bool) -> Tuple[RunDirClaim, Optional[str]]:
    """Lock first, then move: a refused job must not touch the holder's files."""
    try:
        claim = RunDirClaim(lock_run_dir(run_dir))
    except RunDirBusy as err:
        return RunDirClaim(), str(err)
    if fresh:
        claim.moved_to = move_previous_run(run_dir)
    return claim, None


def claim_run_dir(run_dir: Path, fresh: bool, is_main: bool) -> RunDirClaim:
    """Collective: rank 0 locks the run dir (and with ``fresh`` moves an earlier run aside),
    then every rank learns the outcome, so that all stop together when it is busy."""
    import torch.distributed as dist

    claim, problem = _claim_on_main(run_dir, fresh) if is_main else (RunDirClaim(), None)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        problem = shared[0]
    if problem is not None:
        raise RunDirBusy(problem)
    if claim.moved_to is not None:
        print(
            f"warning: --no-resume: moved the earlier run's files in {run_dir} to {claim.moved_to}",
            file=sys.stderr,
            flush=True,
        )
    return claim


def starts_fresh(resume: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """--no-resume clears the run dir on a job's first attempt only: a torchrun/scheduler restart
    of the same job resumes the checkpoints its own first attempt wrote."""
    return not resume and environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
