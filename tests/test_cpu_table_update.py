"""fbgemm's two CPU paths for fused rowwise Adagrad in mlet-train (--cpu-table-update, issue 29):
fbgemm's JIT kernels (the default) and its loop (fbgemm's counter kernel with neutral settings,
two more per-row states). The distributed equivalence of both paths to a one-process reference is in
test_sharded_equivalence.py; here: which path each configuration takes, and that a checkpoint
written by either path resumes in the other (2 gloo ranks): the loop's extra states are left out
of a load from a checkpoint that lacks them and start at zero, which the update never reads."""

from pathlib import Path
from typing import Dict, List

import pytest
import torch
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode

import test_fault_tolerance
from dist_launch import torchrun
from mlet_dist.training import loop_states
from mlet_dist.training.optim import OptimConfig
from test_fault_tolerance import ARGS, TRAIN, _checkpoint_state, _final_state, _update_errors

data = test_fault_tolerance.data  # the fault-tolerance runs' prepared sample, by assignment

# The relative update difference a resume across the paths may show (rounding only: the JIT
# kernel sums g^2 as a tree, the loop in order); a momentum1 zeroed on resume read as 0.59 (planted once).
CROSS_PATH_TOL = 1e-3


def test_the_loop_is_asked_for_and_only_for_rowwise_adagrad_on_cpu() -> None:
    loop = OptimConfig(cpu_table_update="loop").fused_table_kwargs("cpu")
    assert loop["weight_decay_mode"] == WeightDecayMode.COUNTER
    assert "counter_based_regularization" in loop
    for kwargs in (
        OptimConfig().fused_table_kwargs("cpu"),  # the default: fbgemm's JIT path
        OptimConfig(cpu_table_update="loop").fused_table_kwargs("cuda"),
        OptimConfig(embedding_optimizer="sgd", cpu_table_update="loop").fused_table_kwargs("cpu"),
        OptimConfig(embedding_optimizer="adagrad", cpu_table_update="loop").fused_table_kwargs("cpu"),
    ):
        assert "weight_decay_mode" not in kwargs and "counter_based_regularization" not in kwargs
    with pytest.raises(ValueError, match="--cpu-table-update must be one of jit, loop"):
        OptimConfig(cpu_table_update="fast")


def test_only_the_loop_states_a_checkpoint_lacks_are_left_out() -> None:
    param = "model.sparse.t_C0.weight"
    state = {
        "model": {},
        "optim": {
            "state": {
                param: {name: torch.ones(3) for name in ("t_C0.momentum1", "t_C0.prev_iter", "t_C0.row_counter")}
            },
            "param_groups": [],
        },
    }
    saved = {f"optim.state.{param}.t_C0.momentum1", f"optim.state.{param}.t_C0.row_counter"}
    request, absent = loop_states.without_absent_loop_states(state, saved)
    assert absent == [f"optim.state.{param}.t_C0.prev_iter"]
    assert set(request["optim"]["state"][param]) == {"t_C0.momentum1", "t_C0.row_counter"}
    assert state["optim"]["state"][param]["t_C0.prev_iter"].eq(0).all()  # as a fresh job's
    merged = loop_states.loaded_optimizer_state(state, request)
    assert set(merged["state"][param]) == set(state["optim"]["state"][param])
    everything = saved | set(absent)
    assert loop_states.without_absent_loop_states(state, everything) == (state, [])


def _die_after_step_4(data: Path, run: Path, path: str) -> None:
    with pytest.raises(AssertionError):  # no restarts allowed: the job fails at step 5
        torchrun(
            TRAIN,
            ["--data", str(data), "--run-dir", str(run), *ARGS, "--cpu-table-update", path],
            env_extra={"MLET_FAULT": "step:5:1"},
        )
    assert (run / "checkpoints" / "step-00000004" / "train_state.json").is_file()


def _comparable(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Weights and optimizer state both paths keep (not the loop's own states)."""
    return {k: v for k, v in state.items() if not loop_states.is_loop_state(k)}


@pytest.mark.parametrize("first,then", [("jit", "loop"), ("loop", "jit")])
def test_a_checkpoint_resumes_on_the_other_path(data: Path, tmp_path: Path, first: str, then: str) -> None:
    """A job on one path dies after its step-4 checkpoint and resumes on the other; its weights
    and optimizer state at step 8 follow an uninterrupted run on the first path."""
    reference = tmp_path / "reference"
    torchrun(TRAIN, ["--data", str(data), "--run-dir", str(reference), *ARGS, "--cpu-table-update", first])
    run = tmp_path / "switched"
    _die_after_step_4(data, run, first)
    start = _comparable(_checkpoint_state(run / "checkpoints" / "step-00000004", tmp_path))  # kept 2: gone at 8
    resumed = torchrun(TRAIN, ["--data", str(data), "--run-dir", str(run), *ARGS, "--cpu-table-update", then])
    log = resumed.stdout + resumed.stderr
    assert "resuming from" in log and "step-00000004" in log
    assert ("has no fbgemm CPU loop states" in log) == (first == "jit")

    final = _final_state(run, tmp_path)
    assert any(loop_states.is_loop_state(k) for k in final) == (then == "loop")
    final, ref_final = _comparable(final), _comparable(_final_state(reference, tmp_path))
    assert set(final) == set(ref_final) and any(k.endswith(".momentum1") for k in final)
    moved: List[str] = [k for k in ref_final if k.startswith("model.") and (ref_final[k] - start[k]).abs().max() > 1e-4]
    assert len(moved) >= 10, f"training barely moved the weights ({moved}): the comparison would be vacuous"
    errors = _update_errors(final, ref_final, start)
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] <= CROSS_PATH_TOL, f"{worst}: update differs by {errors[worst]:.2e} of its size"
