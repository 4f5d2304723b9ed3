"""TorchRec's TrainPipelineSparseDist (training/loop.py) trains exactly like the plain loop:
2 gloo ranks, 20 SGD steps, losses and every weight within 1e-6, table-, row- and column-wise
(column-wise tables really split into 4 column shards over both ranks)."""

import pytest
import torch

import equivalence_setup as setup
from sharded_training import run_sharded
from test_sharded_equivalence import _column_blocks

STEPS = 20
TOL = 1e-6
MOVED_MIN = 100 * TOL  # every weight must move far beyond the tolerance the runs are compared at


@pytest.mark.parametrize(
    "sharding, projection_after_comm",
    [("table_wise", False), ("row_wise", False), ("column_wise", False), ("table_wise", True)],
)
def test_pipelined_steps_equal_the_plain_loop(sharding: str, projection_after_comm: bool) -> None:
    """projection_after_comm: the pipeline traces the unsharded MLET collection around the sharded
    k-wide EBC (mlet-train --projection-after-comm); its input checks once failed that trace."""
    plain = run_sharded(sharding, steps=STEPS, projection_after_comm=projection_after_comm)
    piped = run_sharded(sharding, steps=STEPS, pipeline="sparse-dist", projection_after_comm=projection_after_comm)
    assert piped["pipelined_modules"] >= 1, "the pipeline overlapped nothing: it ran as the plain loop"
    if sharding == "column_wise":
        assert _column_blocks(piped)
    assert len(plain["losses_rank0"]) == len(piped["losses_rank0"]) == STEPS
    assert max(abs(a - b) for a, b in zip(plain["losses_rank0"], piped["losses_rank0"])) < TOL
    init = setup.initial_state(mlet=True)  # what both runs loaded before step 1
    assert set(plain["state"]) == set(piped["state"]) == set(init)
    for name, ref in plain["state"].items():
        got = piped["state"][name]
        assert torch.allclose(got, ref, rtol=0, atol=TOL), f"{name}: max diff {(got - ref).abs().max():.2e}"
        moved = float((ref - init[name]).abs().max())  # agreement within TOL means nothing if it never moved
        assert moved > MOVED_MIN, f"{name} moved only {moved:.2e} in {STEPS} steps: the comparison is vacuous"
    assert plain["losses_rank0"][0] != plain["losses_rank0"][-1]  # training happened
