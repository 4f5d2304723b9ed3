"""Where prep tasks run: this process (one worker), a local process pool, or a Dask distributed cluster.

All give `submit(fn, *args) -> future` with `.result()` / `.done()`; driver.py needs nothing else.
One worker runs the tasks on a few threads of this process (numpy and Arrow release the GIL), so a
library call with PrepConfig() starts no processes and pickles nothing, yet runs the same tasks.
Dask (not Ray) because it is what NVTabular and TorchRec's own Criteo preprocessing build on, so a
site that preprocesses recsys logs likely runs it already; it is pure Python (dask + distributed,
~2.5 MB of wheels, no binary runtime) and installs from the package registry with our pins; its
`dask worker` / `dask scheduler` commands are plain processes that Slurm or Kubernetes start like
any other (launch/README.md). Ray would bring an ~80 MB binary runtime and its own object store for
what here is a map over byte ranges plus an in-order merge.
"""

from __future__ import annotations

import collections
import multiprocessing
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Deque, Iterable, Iterator, Optional, Tuple

from data_prep.spec import PrepConfig


# Imported once by the forkserver, so each worker starts with the task code loaded. A name that does
# not import is skipped silently by multiprocessing (workers then import it per process).
FORKSERVER_PRELOAD = ["data_prep.parallel.tasks"]


class WorkerFailed(RuntimeError):
    """A task failed for a reason other than bad input (a worker process died, a lost node)."""


class Engine:
    slots: int = 1  # tasks that run at once (the driver keeps twice as many in flight)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InProcessEngine(Engine):
    """One worker: the tasks on `threads` threads of this process (what --workers 1 means)."""

    def __init__(self, threads: int) -> None:
        self.slots = threads
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prep")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class LocalEngine(Engine):
    """Worker processes on this machine (forkserver: no fork of a threaded parent)."""

    def __init__(self, workers: int) -> None:
        self.slots = workers
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskEngine(Engine):
    """A Dask distributed client: of the cluster at `scheduler`, or of a local cluster."""

    def __init__(self, workers: int, scheduler: Optional[str]) -> None:
        self.slots = workers
        try:
            from distributed import Client, LocalCluster
        except ImportError:  # pragma: no cover - depends on the install
            raise ValueError(
                "the dask engine needs dask distributed: pip install 'mlet_dist[dask]' (or -r requirements/common.txt)"
            ) from None
        self.cluster = None
        if scheduler:
            self.client = Client(scheduler)
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            self.client = Client(self.cluster)
        # Tasks import data_prep: ship this checkout's path to workers that lack it (a real cluster
        # should install the package instead; see launch/README.md).
        repo = str(Path(__file__).resolve().parents[2])
        self.client.run(_add_path, repo)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _add_path(repo: str) -> None:
    import sys

    if repo not in sys.path:
        sys.path.insert(0, repo)


def make_engine(cfg: PrepConfig) -> Engine:
    if cfg.engine == "dask" or cfg.scheduler:
        return DaskEngine(cfg.workers, cfg.scheduler)
    if cfg.workers == 1:
        return InProcessEngine(max(1, min(cfg.threads, 8)))
    return LocalEngine(cfg.workers)


def ordered(
    engine: Engine, fn: Callable[..., Any], tasks: Iterable[Tuple[str, Callable[[], tuple]]], window: int
) -> Iterator[Any]:
    """Results of fn(*args()) for each (label, args) task, in task order, at most `window` in flight
    (memory stays bounded). `args` is called at submission time, so it sees the merge's state.
    A worker that dies raises WorkerFailed naming the task's label (the input file and range)."""
    pending: Deque[Tuple[str, Any]] = collections.deque()
    source = iter(tasks)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window:
                try:
                    label, args = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((label, _submit(engine, fn, label, args, pending)))
            if not pending:
                return
            label, future = pending.popleft()
            yield wait(label, future)
    finally:
        for _, f in pending:
            f.cancel()


def _submit(
    engine: Engine, fn: Callable[..., Any], label: str, args: Callable[[], tuple], pending: Iterable[Tuple[str, Any]]
) -> Any:
    """engine.submit, where a pool already broken by a worker that died under an earlier task
    (a race under load: the death lands before the next submission) names that task, as ``wait``
    would have a moment later, instead of raising BrokenProcessPool from here."""
    try:
        return engine.submit(fn, *args())
    except BrokenExecutor as err:
        for earlier, future in list(pending):
            wait(earlier, future)  # raises WorkerFailed for the task whose worker died
        raise WorkerFailed(f"worker failed on {label}: {type(err).__name__}: {err}") from err


def wait(label: str, future: Any) -> Any:
    """future.result(); bad input (ValueError, OSError) passes as it is, anything else names the task."""
    try:
        return future.result()
    except (ValueError, OSError):
        raise
    except Exception as e:  # BrokenProcessPool, dask's KilledWorker, a bug in a task
        raise WorkerFailed(f"worker failed on {label}: {type(e).__name__}: {e}") from e
