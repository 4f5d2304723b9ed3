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
"""

import atexit
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

TENSORBOARD_SUBDIR = "tensorboard"
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


def _is_number(value: Any) -> bool:
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
                print(f"warning: no TensorBoard event files ({e}); `pip install tensorboard` "
                      "(requirements/common.txt) to get them. metrics.jsonl is still written.",
                      file=sys.stderr)
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
