"""Learning-rate warm-up and decay (issue 31 item 10): the step -> lr function, its flags, and
that the lr it sets reaches fbgemm's fused table kernel on the step it is meant for.

The sharded tests run in this process on a gloo group of 1 (the equivalence model: 4 tables,
MLET k=64 -> d=8), fused SGD tables and SGD dense, so a table moves by exactly lr x gradient."""

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator, List, Optional

import pytest
import torch
import torch.distributed as dist
from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

import equivalence_setup as setup
from mlet_dist.distributed.env import DistEnv, init_distributed
from mlet_dist.distributed.sharding import ShardingConfig, shard_model
from mlet_dist.distributed.state import gather_full_state_dict, load_full_state_dict
from mlet_dist.training.checkpoint import TrainPosition
from mlet_dist.training.config import parse_args
from mlet_dist.training.lr_schedule import LRScheduleConfig, lr_multiplier
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer, lr_schedule
from mlet_dist.training.loop import LoopConfig
from mlet_dist.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
BASE_LR = 0.1


# --- the step -> lr function -------------------------------------------------------------------


def test_warm_up_is_linear_from_lr_over_n_at_step_1_to_the_full_lr_at_step_n() -> None:
    config = LRScheduleConfig(warmup_steps=4)
    assert [lr_multiplier(config, t) for t in range(1, 7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_decay_is_power_2_over_its_window_then_held_at_its_last_value() -> None:
    config = LRScheduleConfig(warmup_steps=2, decay_start=5, decay_steps=4)
    got = [lr_multiplier(config, t) for t in range(1, 12)]
    # warm-up 1/2, full lr until the decay (the reference holds 1/2 there), ((4 - (t - 5)) / 4)^2, then 1/16
    assert got == [0.5, 1.0, 1.0, 1.0, 1.0, (3 / 4) ** 2, (2 / 4) ** 2, (1 / 4) ** 2, 1 / 16, 1 / 16, 1 / 16]


def test_default_schedule_is_constant() -> None:
    config = OptimConfig().schedule
    assert config.constant and {lr_multiplier(config, t) for t in range(1, 1000)} == {1.0}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"warmup_steps": -1}, "--lr-warmup-steps must be >= 0"),
        ({"decay_steps": -3}, "--lr-decay-steps must be >= 0"),
        ({"decay_start": 2}, "--lr-decay-start 2 needs --lr-decay-steps > 0"),
        ({"warmup_steps": 10, "decay_start": 5, "decay_steps": 5}, "--lr-decay-start (5) must be >= --lr-warmup-steps"),
    ],
)
def test_bad_schedules_are_refused(kwargs: Dict[str, int], message: str) -> None:
    with pytest.raises(ValueError) as err:
        LRScheduleConfig(**kwargs)
    assert message in str(err.value)


# --- flags -----------------------------------------------------------------------------------


def test_flags_fill_the_config_tree() -> None:
    cfg = parse_args(
        [
            "--data",
            "d",
            "--lr-warmup-steps",
            "100",
            "--lr-decay-start",
            "200",
            "--lr-decay-steps",
            "50",
            "--lr-schedule-applies-to",
            "dense",
        ]
    )
    assert cfg.optim.schedule == LRScheduleConfig(warmup_steps=100, decay_start=200, decay_steps=50, applies_to="dense")


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlet_dist.train", "--data", "nowhere", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def test_a_negative_warm_up_is_one_error_line() -> None:
    proc = _train_cli("--lr-warmup-steps", "-1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --lr-warmup-steps must be >= 0 steps (0: off), got -1"]


@pytest.mark.parametrize(
    "theirs, ours",
    [
        ("--lr_warmup_steps", "--lr-warmup-steps"),
        ("--lr-num-warmup-steps", "--lr-warmup-steps"),
        ("--lr_decay_start", "--lr-decay-start"),
        ("--lr-decay-start-step", "--lr-decay-start"),
        ("--lr_decay_steps", "--lr-decay-steps"),
        ("--lr-num-decay-steps", "--lr-decay-steps"),
    ],
)
def test_torchrec_and_mlperf_names_are_answered_with_ours(
    theirs: str, ours: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", f"{theirs}=10"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{theirs} is TorchRec's/MLPerf's name; here: {ours}" in err, err


# --- the sharded model: the lr reaches fbgemm ---------------------------------------------------


@pytest.fixture(scope="module")
def env() -> Iterator[DistEnv]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        for name, value in dict(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        ).items():
            mp.setenv(name, value)
        yield init_distributed("gloo")
        dist.destroy_process_group()


def sharded_run(env: DistEnv, optim: OptimConfig) -> SimpleNamespace:
    model = setup.build_model(torch.device("meta"), mlet=True)
    attach_fused_embedding_optimizer(model, optim, env.device.type)
    sharded = shard_model(model, env, ShardingConfig("table_wise"))
    load_full_state_dict(sharded, setup.initial_state(True))
    return SimpleNamespace(model=sharded, optimizer=build_optimizer(sharded, optim))


def _sgd(**schedule: object) -> OptimConfig:
    return OptimConfig(
        embedding_optimizer="sgd",
        embedding_lr=BASE_LR,
        dense_optimizer="sgd",
        dense_lr=BASE_LR,
        schedule=LRScheduleConfig(**schedule),
    )  # type: ignore[arg-type]


def _state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in gather_full_state_dict(model).items()}


def _one_step(run: SimpleNamespace, multiplier: float) -> Dict[str, torch.Tensor]:
    """The change of every weight in one plain step at ``multiplier`` x the base lrs."""
    before = _state(run.model)
    lr_schedule(run.optimizer, _sgd(warmup_steps=1)).set_multiplier(multiplier)
    run.optimizer.zero_grad()
    loss, _ = run.model(setup.rank_batch(0, 0, 1))
    loss.backward()
    run.optimizer.step()
    return {k: v - before[k] for k, v in _state(run.model).items()}


def test_a_scheduled_lr_reaches_the_fused_table_kernel(env: DistEnv) -> None:
    """TorchRec copies param_groups[0]["lr"] into fbgemm (set_learning_rate) in the fused
    optimizer's zero_grad()/step(); an upgrade that stops doing so fails here."""
    frozen = _one_step(sharded_run(env, _sgd()), 0.0)
    single = _one_step(sharded_run(env, _sgd()), 1.0)
    double = _one_step(sharded_run(env, _sgd()), 2.0)
    tables = [k for k in single if setup.is_table(k)]
    assert len(tables) == 4 and all(single[k].abs().max() > 1e-4 for k in tables)
    for name in single:
        assert torch.equal(frozen[name], torch.zeros_like(frozen[name])), f"{name} moved at lr 0"
        torch.testing.assert_close(double[name], 2 * single[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("applies_to, moved", [("embedding", "dense"), ("dense", "tables")])
def test_applies_to_schedules_one_side_only(env: DistEnv, applies_to: str, moved: str) -> None:
    run = sharded_run(env, _sgd())
    lr_schedule(run.optimizer, _sgd(warmup_steps=1, applies_to=applies_to)).set_multiplier(0.0)
    before = _state(run.model)
    run.optimizer.zero_grad()
    run.model(setup.rank_batch(0, 0, 1))[0].backward()
    run.optimizer.step()
    after = _state(run.model)
    changed = {("tables" if setup.is_table(k) else "dense") for k in after if not torch.equal(after[k], before[k])}
    assert changed == {moved}


# --- the trainer's per-step hook ----------------------------------------------------------------


class _Stream:
    def __init__(self, steps: int) -> None:
        self.steps, self.global_batch_size, self.world_size = steps, setup.LOCAL_BATCH, 1

    def num_batches(self, plan: object) -> int:
        return self.steps

    def iter_from(self, start: int, epoch: int, plan: object) -> Iterator[SimpleNamespace]:
        return (SimpleNamespace(batch=setup.rank_batch(epoch * 100 + b, 0, 1)) for b in range(start, self.steps))

    def data_record(self, plan: object) -> Optional[dict]:
        return None


class _Quiet:
    """RunDirectory, BestModelKeeper and CheckpointManager: nothing written."""

    best_step = 0

    def log(self, *args: object, **kw: object) -> None: ...
    def offer(self, *args: object, **kw: object) -> bool:
        return False

    def state(self) -> dict:
        return {}

    def finish_pending(self) -> None: ...
    def save(self, *args: object) -> None: ...


def _fused_kernels(optimizer: object) -> List[SplitTableBatchedEmbeddingBagsCodegen]:
    """fbgemm's TBE modules behind the fused optimizers (the MLET module keeps them out of modules())."""
    parts = getattr(optimizer, "optimizers", None)
    if parts is None:
        kernel = getattr(optimizer, "_emb_module", None)
        return [kernel] if isinstance(kernel, SplitTableBatchedEmbeddingBagsCodegen) else []
    return [k for _, part in parts for k in _fused_kernels(part)]


def _fit(
    env: DistEnv, run: SimpleNamespace, optim: Optional[OptimConfig], steps: int, pipeline: str, position: TrainPosition
) -> List[List[float]]:
    """Train through Trainer.fit; [fbgemm's table lrs, the dense lr] seen by each step's forward
    (the fused update in that step's backward uses the same fbgemm lr)."""
    kernels = _fused_kernels(run.optimizer)
    assert len(kernels) >= 1
    dense = run.optimizer.optimizers[-1][1]
    seen: List[List[float]] = []
    run.model.register_forward_pre_hook(
        lambda *_: seen.append(sorted({k.get_learning_rate() for k in kernels}) + [dense.param_groups[0]["lr"]])
    )
    quiet = _Quiet()
    metrics = {"val": {"auc": 0.5}, "test": {"auc": 0.5}}
    trainer = Trainer(
        LoopConfig(epochs=position.epoch + 1, log_every=1000, pipeline=pipeline),
        env,
        run.model,
        run.optimizer,
        _Stream(steps),
        evaluate=lambda: metrics,
        out=quiet,
        keeper=quiet,  # type: ignore
        checkpoints=quiet,
        lr_schedule=None if optim is None else lr_schedule(run.optimizer, optim),
    )  # type: ignore
    assert trainer.fit(position).steps == position.step + steps
    return seen


@pytest.mark.parametrize("pipeline", ["none", "sparse-dist"])
def test_each_step_trains_on_its_own_lr(env: DistEnv, pipeline: str) -> None:
    """Step t (from 1) runs on t/4 of the lr: set before its zero_grad, not one step late."""
    optim = _sgd(warmup_steps=4)
    seen = _fit(env, sharded_run(env, optim), optim, 5, pipeline, TrainPosition())
    assert seen == [pytest.approx([BASE_LR * m] * 2, rel=1e-6) for m in (0.25, 0.5, 0.75, 1.0, 1.0)], seen


def test_a_resumed_run_continues_the_schedule_at_its_restored_step(env: DistEnv) -> None:
    optim = _sgd(warmup_steps=2, decay_start=2, decay_steps=10)
    seen = _fit(env, sharded_run(env, optim), optim, 3, "none", TrainPosition(step=6, epoch=1))
    # steps 7, 8, 9 of a decay over steps 2-11
    assert seen == [pytest.approx([BASE_LR * m] * 2, rel=1e-6) for m in (0.5**2, 0.4**2, 0.3**2)], seen


def test_the_defaults_train_bit_for_bit_as_before(env: DistEnv) -> None:
    """No schedule (as before this change), the default one, and a decay that starts beyond the
    run (lrs re-set to base x 1.0 every step) give the same weights, bit for bit."""
    states = []
    for optim in (None, OptimConfig(), OptimConfig(schedule=LRScheduleConfig(decay_start=1000, decay_steps=10))):
        run = sharded_run(env, OptimConfig())
        _fit(env, run, optim, 4, "sparse-dist", TrainPosition())
        states.append(_state(run.model))
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        assert all(torch.equal(state[k], states[0][k]) for k in state)
