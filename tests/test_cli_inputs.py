"""The CLIs' own inputs (issue 32): a sweep's train_args may not set the per-run flags in any
spelling argparse accepts, and config.json values of the wrong type are refused by name."""

from pathlib import Path

import pytest

from mlet_dist.sweep.cli import main as sweep_main
from mlet_dist.sweep.config import load_config as load_sweep_config
from mlet_dist.sweep.config import reserved_flags_in


@pytest.mark.parametrize("args, reserved", [
    (["--seed=5", "--embedding-dim=64"], ["--embedding-dim", "--seed"]),  # --flag=value
    (["--embedding-d", "64"], ["--embedding-dim"]),  # a prefix argparse completes
    (["-d", "4"], ["--embedding-dim"]),
    (["-k8"], ["--inner-dim"]),
    (["--model=baseline", "--arch", "dcnv2"], ["--arch", "--model"]),
    (["--run-dir=x", "--data", "y"], ["--data", "--run-dir"]),
    (["--epochs", "2", "--no-resume", "--embedding-lr=0.3"], []),
])
def test_reserved_flags_in_every_spelling(args: list, reserved: list) -> None:
    assert sorted(reserved_flags_in(args)) == reserved


@pytest.mark.parametrize("yaml", [
    "train_args: ['--seed=5', '--embedding-dim=64']",  # before: every run seed 5, d=64, dirs said d4-s0
    "train_args: [--embedding-d, '64']",
    "model_args: {mlet: ['-k', '16']}",
    "arch_args: {dlrm: ['-d16']}",
])
def test_sweep_refuses_train_args_that_set_per_run_flags(tmp_path: Path, yaml: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(f"data: d\n{yaml}\n")
    with pytest.raises(ValueError, match="may not set"):
        load_sweep_config(config)
    assert sweep_main(["--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "may not set ['--" in err[0], err


def test_sweep_refuses_train_args_train_py_would_not_accept(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text("data: d\ntrain_args: [--epochs, '2', --no-such-flag]\n")
    assert sweep_main(["--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mlet-sweep: error: {config}: train_args/arch_args/model_args: train.py would not accept "
                   "them: unrecognized arguments: --no-such-flag"], err


def test_committed_sweep_configs_still_load() -> None:
    for path in sorted(Path(__file__).resolve().parent.parent.glob("configs/sweep_*.yaml")):
        load_sweep_config(path)
