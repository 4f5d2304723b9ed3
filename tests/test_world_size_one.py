"""One process trains without DDP (issue 29): at world size 1 the dense part is not wrapped in
DistributedDataParallel (nothing to average; its forward wrapper and reducer cost ~0.5 ms of a
batch-128 step), and that changes nothing a run can see: the same losses and weights step by
step, the same checkpoint and optimizer keys, and a checkpoint written with DDP loads into the
unwrapped model (and back).

Runs in this process on a gloo group of 1 (test_lr_schedule's fixture), through mlet-train's
step loop (TrainPipelineSparseDist; the plain loop where it cannot trace) and checkpoint manager."""

from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import equivalence_setup as setup
import test_lr_schedule as lr_tests
from mlet_dist.data.parquet_batches import LoadedBatch
from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.sharding import ShardingConfig, shard_model
from mlet_dist.distributed.state import gather_full_state_dict, load_full_state_dict
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection
from mlet_dist.training.checkpoint import CheckpointManager, TrainPosition
from mlet_dist.training.loop import StepSegment
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer

env = lr_tests.env  # the module-scoped gloo group of 1
STEPS = 6
# mlet-train's defaults (rowwise Adagrad tables, fused Adam dense); the lrs large enough to move
# every weight in STEPS steps
OPTIM = OptimConfig(embedding_lr=0.05, dense_lr=1e-2)
SHARDINGS = {
    "owner_projection": ShardingConfig("table_wise"),  # projections on the table's owner
    "projection_after_comm": ShardingConfig("table_wise", owner_projection=False),  # dense projections
    "data_parallel": ShardingConfig("data_parallel"),  # replicated tables: dense parameters too
}
# the step loop per case: TorchRec's pipeline cannot trace an unsharded MLET module's forward (its
# empty-batch branch), so projection_after_comm runs the plain loop (mlet-train --pipeline none)
PIPELINE = {"owner_projection": "sparse-dist", "projection_after_comm": "none", "data_parallel": "sparse-dist"}


def _run(env: DistEnv, name: str, single_process_ddp: bool) -> SimpleNamespace:
    """The equivalence tests' MLET model, sharded at world size 1 from the same initial state."""
    model = setup.build_model(torch.device("meta"), mlet=True)
    for module in model.modules():  # mlet-train's default (no --check-inputs): the pipeline traces it
        if isinstance(module, MLETEmbeddingBagCollection):
            module.validate_inputs = False
    attach_fused_embedding_optimizer(model, OPTIM, env.device.type)
    sharded = shard_model(model, env, SHARDINGS[name], single_process_ddp=single_process_ddp)
    load_full_state_dict(sharded, setup.initial_state(True))
    return SimpleNamespace(model=sharded, optimizer=build_optimizer(sharded, OPTIM), pipeline=PIPELINE[name])


def _ddp_wrappers(model: torch.nn.Module) -> List[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, DistributedDataParallel)]


def _train(run: SimpleNamespace, env: DistEnv) -> List[torch.Tensor]:
    """STEPS steps through mlet-train's step loop; the per-step losses."""
    batches = (LoadedBatch(setup.rank_batch(step, 0, 1), setup.LOCAL_BATCH) for step in range(STEPS))
    return [loss.clone() for loss in StepSegment(run.model, run.optimizer, batches, env.device, run.pipeline)]


def _full_state(run: SimpleNamespace) -> Dict[str, torch.Tensor]:
    """Every weight, and every optimizer state tensor, by name."""
    state = {f"model.{k}": v.detach().clone() for k, v in gather_full_state_dict(run.model).items()}
    for key, value in _flat(run.optimizer.state_dict()["state"]).items():
        state[f"optim.{key}"] = value
    return state


def _flat(node: object, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Tensors of a nested optimizer state, by dotted key (sharded ones as their local shard)."""
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _flat(child, f"{prefix}{key}.").items()}
    if isinstance(node, torch.Tensor):
        local = node.local_tensor() if hasattr(node, "local_tensor") else node
        return {prefix.rstrip("."): local.detach().clone()}
    return {}


def test_one_process_is_not_wrapped_in_ddp(env: DistEnv) -> None:
    assert _ddp_wrappers(_run(env, "owner_projection", single_process_ddp=False).model) == []
    assert len(_ddp_wrappers(_run(env, "owner_projection", single_process_ddp=True).model)) == 1


@pytest.mark.parametrize("name", list(SHARDINGS))
def test_training_without_ddp_is_identical(env: DistEnv, name: str) -> None:
    """Bit for bit: DDP over one process divides each gradient by 1 and reduces nothing."""
    with_ddp, without = _run(env, name, True), _run(env, name, False)
    assert list(with_ddp.model.state_dict()) == list(without.model.state_dict())  # checkpoint keys
    losses_ddp, losses = _train(with_ddp, env), _train(without, env)
    gap = (torch.stack(losses_ddp) - torch.stack(losses)).abs().max().item()
    assert gap == 0, f"the losses differ by up to {gap:.3g}"
    reference, state = _full_state(with_ddp), _full_state(without)
    assert list(reference) == list(state)  # optimizer keys too
    initial = setup.initial_state(True)
    moved = [k for k in initial if not torch.equal(reference[f"model.{k}"], initial[k])]
    assert len(moved) > len(initial) // 2, f"the steps barely trained ({moved})"
    differ = [k for k in reference if not torch.equal(reference[k], state[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("writer_ddp", [True, False], ids=["ddp_to_plain", "plain_to_ddp"])
def test_checkpoint_crosses_the_ddp_wrapper(env: DistEnv, tmp_path: Path, writer_ddp: bool) -> None:
    """A checkpoint of a DDP-wrapped model (a multi-rank run, or one process before this change)
    loads into the unwrapped one, and back: same keys, every tensor restored."""
    sharding = "projection_after_comm"  # dense projections: the most DDP-wrapped state
    writer = _run(env, sharding, single_process_ddp=writer_ddp)
    _train(writer, env)
    manager = CheckpointManager(tmp_path / "checkpoints", env)
    saved = manager.save(writer.model, writer.optimizer, TrainPosition(step=STEPS))
    reader = _run(env, sharding, single_process_ddp=not writer_ddp)
    assert manager.load(saved, reader.model, reader.optimizer).step == STEPS
    written, loaded = _full_state(writer), _full_state(reader)
    assert list(written) == list(loaded)
    assert any(k.startswith("optim.") for k in written)
    differ = [k for k in written if not torch.equal(written[k], loaded[k])]
    assert not differ, f"{len(differ)} tensors not restored, e.g. {differ[:3]}"
