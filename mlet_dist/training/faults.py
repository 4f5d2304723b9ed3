"""Fault injection for the fault-tolerance tests: make one rank fail at a chosen point, on the
first attempt only, so that torchrun's restart can be exercised.

    MLET_FAULT="step:5:1"          rank 1 dies (os._exit) right after global step 5
    MLET_FAULT="checkpoint:4:1"    rank 1 dies while writing the step-4 checkpoint (after its own
                                   shards are on disk, before the checkpoint is published)
    MLET_FAULT="step:3:1:raise"    rank 1 raises a Python exception after step 3 while its peer
                                   goes on into the next collective (the failure path must not hang)
Unset in normal runs; does nothing then. The trainer reads it once (planned_fault) and stops its
step loop at that step (loop.SegmentEnd.FAULT), so no step reads the environment.
"""

import os
import sys
from dataclasses import dataclass
from typing import NoReturn, Optional

FAULT_EXIT_CODE = 13


class InjectedFault(RuntimeError):
    pass


@dataclass(frozen=True)
class Fault:
    """One planned failure: this rank at ``step`` of ``point``, by os._exit or by raising."""

    point: str
    step: int
    rank: int
    raises: bool

    def fire(self) -> NoReturn:
        if self.raises:
            raise InjectedFault(f"injected fault on rank {self.rank} at {self.point} {self.step}")
        print(f"[fault injection] rank {self.rank} exits at {self.point} {self.step}", file=sys.stderr, flush=True)
        os._exit(FAULT_EXIT_CODE)


def planned_fault(point: str, rank: int) -> Optional[Fault]:
    """MLET_FAULT's failure at ``point`` for ``rank`` on a first attempt; None otherwise (every
    normal run, and torchrun's restarts, which must get past the fault)."""
    spec = os.environ.get("MLET_FAULT")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    want_point, want_step, want_rank, *mode = spec.split(":")
    if want_point != point or int(want_rank) != rank:
        return None
    return Fault(point, int(want_step), rank, raises=mode == ["raise"])


def maybe_fail(point: str, step: int, rank: int) -> None:
    """Fire the planned fault if ``step`` is its step (checkpoint.py's hook, once per save)."""
    fault = planned_fault(point, rank)
    if fault is not None and fault.step == step:
        fault.fire()
