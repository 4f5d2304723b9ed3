"""tests/multiprocess.py: spawned gloo ranks return their values, and a rank that raises or hangs
fails the test in bounded time with the rank's own message (never holds CI)."""

import inspect
import time

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing import ProcessRaisedException
from torchrec.distributed.test_utils import multi_process, process_runner

from mlet_dist.distributed.env import DistEnv
from multiprocess import run_ranks


def _rank_sum(env: DistEnv, scale: int) -> dict:
    total = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(total)
    return {"rank": env.rank, "world": env.world_size, "sum": total * scale}


def _raise_on_rank_1(env: DistEnv) -> None:
    if env.rank == 1:
        raise ValueError("planted failure on rank 1")
    dist.barrier()  # rank 0 waits for a peer that never comes


def _sleep_on_rank_1(env: DistEnv) -> None:
    if env.rank == 1:
        time.sleep(3600)


def test_ranks_return_their_values_in_rank_order() -> None:
    results = run_ranks(_rank_sum, 2, args=(10,))
    assert [r["rank"] for r in results] == [0, 1] and {r["world"] for r in results} == {2}
    assert all(torch.equal(r["sum"], torch.tensor([30.0])) for r in results)


def test_a_rank_that_raises_fails_with_its_traceback_in_bounded_time() -> None:
    start = time.monotonic()
    with pytest.raises(ProcessRaisedException) as failure:
        run_ranks(_raise_on_rank_1, 2, timeout_s=300)
    assert "planted failure on rank 1" in str(failure.value) and "_raise_on_rank_1" in str(failure.value)
    assert failure.value.error_index == 1
    assert time.monotonic() - start < 120  # its peer, stuck in the barrier, was killed: no 300 s wait


def test_a_hung_rank_is_killed_at_the_deadline_and_its_stack_printed(capfd: pytest.CaptureFixture) -> None:
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"ranks \[.*1\] still running after 40 s: killed"):
        run_ranks(_sleep_on_rank_1, 2, timeout_s=40)
    assert time.monotonic() - start < 40 + 60
    assert "in _sleep_on_rank_1" in capfd.readouterr().err  # faulthandler's dump of the hung rank


def test_torchrec_launchers_still_have_no_timeout() -> None:
    """Why tests/multiprocess.py exists: TorchRec 1.8's spawn launchers wait on a Pool without a
    bound. If an upgrade adds one, this fails: switch run_ranks over to the library's launcher."""
    for launcher in (multi_process.run_multi_process_func, process_runner.run_local_multi_process_func):
        params = inspect.signature(launcher).parameters
        assert not any("timeout" in name for name in params), (
            f"{launcher.__module__}.{launcher.__name__} now takes {list(params)}: use it in tests/multiprocess.py"
        )
