"""Fault injection for the fault-tolerance tests: make one rank fail at a chosen point, on the
first attempt only, so that torchrun's restart can be exercised.

    MLET_FAULT="step:5:1"          rank 1 dies (os._exit) right after global step 5
    MLET_FAULT="checkpoint:4:1"    rank 1 dies while writing the step-4 checkpoint (after its own
                                   shards are on disk, before the checkpoint is published)
    MLET_FAULT="step:3:1:raise"    rank 1 raises a Python exception after step 3 while its peer
                                   goes on into the next collective (the failure path must not hang)
Unset in normal runs; does nothing then.
"""

import os
import sys

FAULT_EXIT_CODE = 13


class InjectedFault(RuntimeError):
    pass


def maybe_fail(point: str, step: int, rank: int) -> None:
    spec = os.environ.get("MLET_FAULT")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    want_point, want_step, want_rank, *mode = spec.split(":")
    if want_point == point and int(want_step) == step and int(want_rank) == rank:
        if mode == ["raise"]:
            raise InjectedFault(f"injected fault on rank {rank} at {point} {step}")
        print(f"[fault injection] rank {rank} exits at {point} {step}", file=sys.stderr, flush=True)
        os._exit(FAULT_EXIT_CODE)
