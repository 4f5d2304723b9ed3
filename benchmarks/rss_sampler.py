"""Peak resident memory of a process tree, sampled in a background thread.

tracemalloc does not see tensor memory and ``ru_maxrss`` cannot be reset between stages, so the
stages of a run (and the ranks of a torchrun job, each a child process) are measured by sampling
RSS: ``peak`` is the largest sum over the tree seen since ``reset``, ``per_process`` the largest
RSS of each process seen and ``peak_by_label`` the same per value of an environment variable
(``label_env="RANK"``: per torchrun rank).
"""

import os
import threading
import time
from typing import Dict, Optional

import psutil


class RssSampler:
    """Samples the RSS of ``pid`` (default: this process) and, with ``children``, its descendants."""

    def __init__(
        self,
        pid: Optional[int] = None,
        children: bool = False,
        interval_s: float = 0.005,
        label_env: Optional[str] = None,
    ) -> None:
        self.root = psutil.Process(pid or os.getpid())
        self.label_env = label_env
        self.labels: Dict[int, Optional[str]] = {}
        self.children = children
        self.interval_s = interval_s
        self.peak = 0
        self.per_process: Dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_now(self) -> int:
        return sum(self._sample().values())

    def _sample(self) -> Dict[int, int]:
        processes = [self.root]
        if self.children:
            try:
                processes += self.root.children(recursive=True)
            except psutil.Error:
                pass
        sizes = {}
        for p in processes:
            try:
                sizes[p.pid] = p.memory_info().rss
            except psutil.Error:
                pass
        return sizes

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = self._sample()
            self.peak = max(self.peak, sum(sizes.values()))
            for pid, rss in sizes.items():
                self.per_process[pid] = max(self.per_process.get(pid, 0), rss)
                if self.label_env and self.labels.get(pid) is None:  # a fresh fork: not exec'd yet
                    self.labels[pid] = self._label(pid)
            time.sleep(self.interval_s)

    def _label(self, pid: int) -> Optional[str]:
        try:
            return psutil.Process(pid).environ().get(self.label_env or "")
        except psutil.Error:
            return None

    def peak_by_label(self) -> Dict[str, int]:
        """Largest RSS seen per label value (processes without the variable left out)."""
        peaks: Dict[str, int] = {}
        for pid, rss in self.per_process.items():
            label = self.labels.get(pid)
            if label is not None:
                peaks[label] = max(peaks.get(label, 0), rss)
        return peaks

    def reset(self) -> int:
        """Start a new stage: the peak so far is forgotten; returns the RSS now."""
        now = self.rss_now()
        self.peak, self.per_process = now, {}
        return now

    def __enter__(self) -> "RssSampler":
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_now() if self.root.is_running() else 0)
