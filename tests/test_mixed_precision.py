"""--dense-precision (issue 31 item 10): bf16 autocast over the MLPs and the interaction, the
embedding lookups and the weights in fp32; fp16 refused with one line.

In this process on a gloo group of 1 (test_lr_schedule's fixture), the equivalence model sharded
with fused rowwise-Adagrad tables and an Adam dense part (the CLI defaults), through TorchRec's
TrainPipelineSparseDist as mlet-train runs it."""

from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List

import torch
from torch import nn

import equivalence_setup as setup
import test_lr_schedule
from test_lr_schedule import _state, _train_cli, sharded_run
from mlet_dist.distributed.env import DistEnv
from mlet_dist.training.loop import StepSegment
from mlet_dist.training.optim import OptimConfig
from mlet_dist.training.precision import autocast_dense

# test_lr_schedule's in-process gloo group of 1, bound by assignment: pytest finds the fixture by name
# in this module, and an import of it would read to a linter as redefined by each test's parameter.
env = test_lr_schedule.env

STEPS = 6


def _train(env: DistEnv, precision: str, seen: Dict[str, List[torch.dtype]]) -> Dict[str, object]:
    """STEPS steps on one batch at ``precision``; the output dtypes of every Linear and of the
    sparse arch, the losses, and the weights."""
    run = sharded_run(env, OptimConfig())
    wrapped = autocast_dense(run.model, precision, env.device)
    for name, module in run.model.named_modules():
        if isinstance(module, nn.Linear) or name.endswith("sparse_arch"):
            module.register_forward_hook(_dtype_recorder(seen, "sparse" if name.endswith("sparse_arch") else "linear"))
    before = _state(run.model)
    segment = StepSegment(run.model, run.optimizer, [setup_batch() for _ in range(STEPS)], env.device, "sparse-dist")
    losses = [float(loss) for loss in segment]
    return {
        "wrapped": wrapped,
        "losses": losses,
        "before": before,
        "after": _state(run.model),
        "pipelined": segment.pipelined_modules,
    }


def _dtype_recorder(seen: Dict[str, List[torch.dtype]], kind: str) -> Callable[..., None]:
    def record(module: nn.Module, inputs: object, out: object) -> None:
        dtype = (out if torch.is_tensor(out) else out.values()).dtype  # type: ignore[attr-defined]
        if isinstance(dtype, torch.dtype):  # not the pipeline's fx trace (a Proxy)
            seen.setdefault(kind, []).append(dtype)

    return record


def setup_batch() -> SimpleNamespace:
    return SimpleNamespace(batch=setup.rank_batch(0, 0, 1))


def test_bf16_runs_the_mlps_in_bf16_and_trains_fp32_weights(env: DistEnv) -> None:
    seen: Dict[str, List[torch.dtype]] = {}
    out = _train(env, "bf16", seen)
    assert out["wrapped"] == 1 and out["pipelined"] >= 1  # the pipeline still finds the sharded tables
    assert seen["linear"] and set(seen["linear"]) == {torch.bfloat16}, seen["linear"]
    assert set(seen["sparse"]) == {torch.float32}  # lookups (and MLET projections) outside autocast
    losses = out["losses"]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.01, losses
    before, after = out["before"], out["after"]
    assert {v.dtype for v in after.values()} == {torch.float32}  # checkpoints, collapse, export: fp32
    assert all(not torch.equal(after[k], before[k]) for k in after if ".embedding_bags." in k or "_linear" in k)


def test_fp32_default_changes_nothing(env: DistEnv) -> None:
    seen: Dict[str, List[torch.dtype]] = {}
    out = _train(env, "fp32", seen)
    assert out["wrapped"] == 0 and set(seen["linear"]) == {torch.float32}


def test_fp16_is_refused_with_one_line() -> None:
    proc = _train_cli("--dense-precision", "fp16")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: --dense-precision fp16 is not supported")
        and "use --dense-precision bf16" in lines[0]
    ), proc.stderr


def test_mlet_train_bf16_run_completes(tmp_path: Path) -> None:
    """The flag's wiring in train.py: a tiny bf16 run trains, evaluates and collapses."""
    from dist_launch import torchrun
    from test_new_user_edges import tiny_run

    train, args = tiny_run(tmp_path, tmp_path / "run")
    proc = torchrun(train, [*args, "--dense-precision", "bf16"], nproc=1)
    assert "epoch 0: train loss" in proc.stdout, proc.stdout
    config = (tmp_path / "run" / "config.json").read_text()
    assert '"dense_precision": "bf16"' in config
