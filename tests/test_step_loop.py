"""The step loop's boundaries (training/loop.py): a segment of steps returns why it stopped, in
one order (fault, epoch end, evaluation point, checkpoint), and the MLET_FAULT hook is read once
(training/faults.py), not at every step."""

from typing import Iterator, List

import pytest
import torch

from mlet_dist.training.faults import Fault, InjectedFault, maybe_fail, planned_fault
from mlet_dist.training.loop import Boundaries, Cursor, SegmentEnd, run_segment


def _losses(n: int) -> Iterator[torch.Tensor]:
    return iter([torch.tensor(float(i)) for i in range(n)])


def _ends(boundaries: Boundaries, steps: int, batches: int, start_step: int = 0) -> List[tuple]:
    """(global step, why) of every return of run_segment over one iterator of ``steps`` losses."""
    losses, cursor, seen = _losses(steps), Cursor(start_step, 0, batches), []
    while True:
        end = run_segment(losses, cursor, boundaries, lambda loss: None)
        seen.append((cursor.global_step, end))
        if end not in (SegmentEnd.CHECKPOINT_DUE, SegmentEnd.EVAL_DUE):
            return seen


def test_a_segment_returns_at_each_boundary_and_goes_on_after_a_checkpoint() -> None:
    got = _ends(Boundaries(eval_every=4, checkpoint_every=3), steps=10, batches=10)
    assert got == [
        (3, SegmentEnd.CHECKPOINT_DUE),
        (4, SegmentEnd.EVAL_DUE),
        (6, SegmentEnd.CHECKPOINT_DUE),
        (8, SegmentEnd.EVAL_DUE),
        (9, SegmentEnd.CHECKPOINT_DUE),
        (10, SegmentEnd.EPOCH_END),
    ]


def test_the_boundaries_order_fault_epoch_end_evaluation_checkpoint() -> None:
    both = Boundaries(eval_every=2, checkpoint_every=2)
    assert both.after(Cursor(global_step=4, next_batch=4, batches=9)) is SegmentEnd.EVAL_DUE  # then checkpoints
    assert both.after(Cursor(global_step=4, next_batch=9, batches=9)) is SegmentEnd.EPOCH_END  # the epoch's own
    faulty = Boundaries(eval_every=2, checkpoint_every=2, fault_step=4)
    assert faulty.after(Cursor(global_step=4, next_batch=9, batches=9)) is SegmentEnd.FAULT
    assert Boundaries().after(Cursor(global_step=5, next_batch=1, batches=9)) is None


def test_steps_that_run_out_before_the_epochs_count_say_so() -> None:
    assert _ends(Boundaries(), steps=3, batches=10, start_step=20) == [(23, SegmentEnd.DATA_END)]


def test_the_fault_hook_is_read_once_and_only_on_a_first_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLET_FAULT", raising=False)
    assert planned_fault("step", 1) is None  # every normal run: no fault step to test against
    monkeypatch.setenv("MLET_FAULT", "step:5:1:raise")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert planned_fault("step", 1) == Fault("step", 5, 1, raises=True)
    assert planned_fault("step", 0) is None and planned_fault("checkpoint", 1) is None
    with pytest.raises(InjectedFault, match="injected fault on rank 1 at step 5"):
        maybe_fail("step", 5, 1)
    maybe_fail("step", 4, 1)  # another step: nothing
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert planned_fault("step", 1) is None  # the restart must get past the fault
