"""A tqdm bar over input bytes (or generated rows) with rows and rows/s, for every kind of preparation."""

from __future__ import annotations

import argparse
import sys
import time


class Progress:
    """tqdm bar over on-disk input bytes (MB/s), with rows and rows/s in the postfix."""

    def __init__(self, enabled: bool, total_bytes: int, desc: str, unit: str = "B") -> None:
        self.bar = None
        self.rows = 0
        self.t0 = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_bytes,
                unit=unit,
                unit_scale=True,
                unit_divisor=1000,  # SI steps: 200 MB reads 200M (a 1e6 divisor showed it as 200k)
                desc=desc,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )

    def update(self, nbytes: int, rows: int) -> None:
        self.rows += rows
        if self.bar is not None:
            rate = self.rows / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.rows:,} rows, {rate:,.0f} rows/s", refresh=False)
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def add_stage_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress`` for a command whose long stages print StageLog lines."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a line on stderr for each stage that runs more than a few seconds (default: when stderr "
        "is a terminal, as mlet-prep's bars: a log file or a test reading stderr gets none)",
    )


def stage_lines_wanted(flag: bool | None) -> bool:
    """``--progress/--no-progress`` as given, else on when stderr is a terminal: a log file, a pipe
    or a test reading stderr gets no progress lines unless asked (mlet-prep's bars do the same)."""
    return sys.stderr.isatty() if flag is None else flag


class StageLog:
    """One stderr line per long stage of a command, for stages no bar can follow (a checkpoint
    load, a model build) and for logs, where a redrawn tqdm bar is noise.

    A stage says nothing unless it runs ``after_s`` seconds: then ``<prog>: <stage> ...`` (from a
    timer thread, so a stage that never returns still shows), ``tick`` adds at most one
    ``<done>/<total>`` line every ``every_s`` seconds, and the end gives ``done in <s>s``. Quick
    commands stay as quiet as before; ``enabled=False`` (``--no-progress``, ranks other than 0)
    silences it."""

    def __init__(self, prog: str, enabled: bool = True, after_s: float = 3.0, every_s: float = 10.0) -> None:
        import threading

        self.prog = prog
        self.enabled = enabled
        self.after_s = after_s
        self.every_s = every_s
        self._lock = threading.Lock()
        self._name = ""
        self._started = 0.0
        self._last_line = 0.0
        self._shown = False

    def _say(self, text: str) -> None:
        with self._lock:
            print(f"{self.prog}: {text}", file=sys.stderr, flush=True)
            self._last_line = time.perf_counter()
            self._shown = True

    def stage(self, name: str) -> "_Stage":
        """``with log.stage("load checkpoint"): ...``"""
        return _Stage(self, name)

    def tick(self, done: int, total: int, unit: str) -> None:
        """Progress inside the current stage, shown once the stage is long and the last line old."""
        now = time.perf_counter()
        if self.enabled and now - self._started >= self.after_s and now - self._last_line >= self.every_s:
            self._say(f"{self._name}: {done}/{total} {unit}")


class _Stage:
    """One ``StageLog.stage``: starts the timer that announces a long stage, ends it with its time."""

    def __init__(self, log: StageLog, name: str) -> None:
        self.log = log
        self.name = name

    def __enter__(self) -> None:
        import threading

        log = self.log
        log._name, log._started, log._last_line, log._shown = self.name, time.perf_counter(), 0.0, False
        self._timer = threading.Timer(log.after_s, log._say, (f"{self.name} ...",))
        self._timer.daemon = True
        if log.enabled:
            self._timer.start()

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        log = self.log
        seconds = time.perf_counter() - log._started
        if log.enabled and exc[0] is None and (log._shown or seconds >= log.after_s):
            log._say(f"{self.name}: done in {seconds:.1f}s")
