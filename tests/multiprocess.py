"""Run a test function on N gloo ranks in spawned processes, as TorchRec's own tests do, with a bound.

TorchRec 1.8's launchers (test_utils.multi_process.run_multi_process_func, process_runner.
run_local_multi_process_func, MultiProcessTestBase) wait on a multiprocessing Pool with no timeout:
a rank stuck in a collective after its peer raised holds the test (and CI) forever. Here the parent
joins with a deadline, kills every rank past it, and re-raises a rank's exception with its
traceback (torch.multiprocessing's ProcessRaisedException), naming the rank.

Each rank sees the environment torchrun gives a worker (RANK, WORLD_SIZE, LOCAL_*, an agent store
and run id), so ``init_distributed`` takes the same path as under ``torchrun --standalone``. The
parent hosts the rendezvous store on a port the OS picks: no free-port guess that another test on
the box can take first.
"""

import faulthandler
import io
import os
import time
import uuid
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mlet_dist.distributed.env import DistEnv, init_distributed, shutdown_distributed

DEFAULT_TIMEOUT_S = 600.0
# A hung rank prints its stack (faulthandler) this long before the parent kills it.
STACK_DUMP_LEAD_S = 5.0


def run_ranks(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: Sequence[Any] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Optional[Dict[str, str]] = None,
) -> List[Any]:
    """``fn(dist_env, *args)`` on every rank of a fresh gloo group; the ranks' return values in rank order.

    ``fn`` must be a module-level function (spawn pickles it by name) and return what torch.save
    can write. A rank that raises fails the call with that rank's traceback; ranks still running
    after ``timeout_s`` are killed and the call fails naming them.
    """
    store = dist.TCPStore(
        "127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s)
    )
    results: "mp.SimpleQueue[tuple]" = mp.get_context("spawn").SimpleQueue()
    rank_env = dict(env or {}, MASTER_PORT=str(store.port), TORCHELASTIC_RUN_ID=f"spawn-{uuid.uuid4().hex[:12]}")
    dump_at = time.time() + timeout_s - STACK_DUMP_LEAD_S
    context = mp.start_processes(
        _rank_main,
        args=(fn, world_size, rank_env, tuple(args), results, timeout_s, dump_at),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    received = _join_collecting(context, results, timeout_s)
    missing = sorted(set(range(world_size)) - set(received))
    if missing:
        raise AssertionError(f"ranks {missing} exited without returning a result")
    return [received[rank] for rank in range(world_size)]


def _join_collecting(context: mp.ProcessContext, results: Any, timeout_s: float) -> Dict[int, Any]:
    """Drain results while joining (a rank blocks in put() until the parent reads), up to the deadline."""
    deadline = time.monotonic() + timeout_s
    received: Dict[int, Any] = {}
    while True:
        _drain(results, received)
        try:
            if context.join(timeout=0.2):
                break
        except Exception:
            _kill(context)
            raise
        if time.monotonic() > deadline:
            alive = [rank for rank, p in enumerate(context.processes) if p.is_alive()]
            _kill(context)
            raise AssertionError(
                f"ranks {alive} still running after {timeout_s:.0f} s: killed "
                "(their stacks are printed above, by faulthandler)"
            )
    _drain(results, received)
    return received


def _drain(results: Any, received: Dict[int, Any]) -> None:
    while not results.empty():
        rank, payload = results.get()
        received[rank] = torch.load(io.BytesIO(payload), weights_only=False)


def _kill(context: mp.ProcessContext) -> None:
    for process in context.processes:
        if process.is_alive():
            process.kill()
        process.join(timeout=30)


def _rank_main(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    rank_env: Dict[str, str],
    args: tuple,
    results: Any,
    timeout_s: float,
    dump_at: float,
) -> None:
    """One rank: torchrun's environment, the group, ``fn``, its result to the parent, an orderly end."""
    os.environ.update(
        rank_env,
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        OMP_NUM_THREADS="1",
        TORCHELASTIC_USE_AGENT_STORE="True",
        TORCHELASTIC_RESTART_COUNT="0",
    )
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(max(dump_at - time.time(), 1.0), exit=False)
    dist_env: DistEnv = init_distributed("gloo", timeout_s=timeout_s)
    result = fn(dist_env, *args)
    payload = io.BytesIO()
    torch.save(result, payload)
    results.put((rank, payload.getvalue()))
    shutdown_distributed()
    faulthandler.cancel_dump_traceback_later()
