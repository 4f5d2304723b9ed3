"""The dense optimizer's fused kernel (issue 29 item 3): Adam and Adagrad over the MLPs and MLET
projections run torch's fused step (one op per parameter; the per-op cost dominated a batch-128
CPU step), and train what the per-tensor loop trains, within float rounding.

Runs in this process on a gloo group of 1 (test_lr_schedule's fixture and sharded model)."""

from typing import Dict

import pytest
import torch

import equivalence_setup as setup
import test_lr_schedule as lr_tests
from mlet_dist.training import optim
from mlet_dist.training.optim import OptimConfig, fused_kwargs

env = lr_tests.env  # the module-scoped gloo group of 1
STEPS = 5
TOLERANCE = 1e-6  # measured: 2.4e-7 between fused and loop Adam/Adagrad updates


@pytest.mark.parametrize("name, fused", [("adam", True), ("adagrad", True), ("sgd", False)])
def test_fused_for_adam_and_adagrad_on_cpu(name: str, fused: bool) -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert fused_kwargs(name, params) == ({"fused": True} if fused else {})


def test_no_fused_kernel_for_a_device_it_does_not_serve() -> None:
    assert fused_kwargs("adam", [torch.nn.Parameter(torch.zeros(3, device="meta"))]) == {}
    assert fused_kwargs("adam", []) == {}


def _dense_part(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return optimizer.optimizers[-1][1]  # type: ignore[attr-defined]


def _trained(env: object, config: OptimConfig, fused: bool) -> Dict[str, torch.Tensor]:
    """The full state after STEPS plain steps; asserts which dense step ran."""
    run = lr_tests.sharded_run(env, config)  # type: ignore[arg-type]
    assert [bool(g.get("fused")) for g in _dense_part(run.optimizer).param_groups] == [fused]
    for step in range(STEPS):
        run.optimizer.zero_grad()
        loss, _ = run.model(setup.rank_batch(step, 0, 1))
        loss.backward()
        run.optimizer.step()
    return lr_tests._state(run.model)


@pytest.mark.parametrize("dense", ["adam", "adagrad"])
def test_fused_dense_step_trains_what_the_loop_trains(env: object, dense: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = OptimConfig(dense_optimizer=dense, dense_lr=1e-2)
    fused = _trained(env, config, fused=True)
    monkeypatch.setattr(optim, "FUSED_DENSE_OPTIMIZERS", frozenset())  # torch's per-tensor loop
    loop = _trained(env, config, fused=False)
    initial = setup.initial_state(True)
    moved = [k for k in loop if not torch.equal(loop[k], initial[k])]
    assert len(moved) > len(loop) // 2, "the steps did not train"
    worst = max((fused[k] - loop[k]).abs().max().item() for k in loop)
    assert worst <= TOLERANCE, f"fused and loop differ by {worst:.3g}"
