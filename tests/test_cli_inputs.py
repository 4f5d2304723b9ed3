"""The CLIs' own inputs (issue 32): a sweep's train_args may not set the per-run flags in any
spelling argparse accepts, and config.json values of the wrong type are refused by name."""

from pathlib import Path

import pytest

from mlet_dist.sweep.cli import main as sweep_main
from mlet_dist.sweep.config import load_config as load_sweep_config
from mlet_dist.sweep.config import reserved_flags_in


@pytest.mark.parametrize(
    "args, reserved",
    [
        (["--seed=5", "--embedding-dim=64"], ["--embedding-dim", "--seed"]),  # --flag=value
        (["--embedding-d", "64"], ["--embedding-dim"]),  # a prefix argparse completes
        (["-d", "4"], ["--embedding-dim"]),
        (["-k8"], ["--inner-dim"]),
        (["--model=baseline", "--arch", "dcnv2"], ["--arch", "--model"]),
        (["--run-dir=x", "--data", "y"], ["--data", "--run-dir"]),
        (["--epochs", "2", "--no-resume", "--embedding-lr=0.3"], []),
    ],
)
def test_reserved_flags_in_every_spelling(args: list, reserved: list) -> None:
    assert sorted(reserved_flags_in(args)) == reserved


@pytest.mark.parametrize(
    "yaml",
    [
        "train_args: ['--seed=5', '--embedding-dim=64']",  # before: every run seed 5, d=64, dirs said d4-s0
        "train_args: [--embedding-d, '64']",
        "model_args: {mlet: ['-k', '16']}",
        "arch_args: {dlrm: ['-d16']}",
    ],
)
def test_sweep_refuses_train_args_that_set_per_run_flags(
    tmp_path: Path, yaml: str, capsys: pytest.CaptureFixture
) -> None:
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
    assert err == [
        f"mlet-sweep: error: {config}: train_args/arch_args/model_args: train.py would not accept "
        "them: unrecognized arguments: --no-such-flag"
    ], err


def test_committed_sweep_configs_still_load() -> None:
    for path in sorted(Path(__file__).resolve().parent.parent.glob("configs/sweep_*.yaml")):
        load_sweep_config(path)


def _saved_config(tmp_path: Path) -> dict:
    from mlet_dist.config_io import to_jsonable
    from mlet_dist.training.config import parse_args

    return to_jsonable(parse_args(["--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run")]))


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("batch_size", True, "batch_size: expected an integer, got true"),  # before: a batch size of 1
        ("batch_size", "64", 'batch_size: expected an integer, got "64"'),  # before: a TypeError traceback
        ("epochs", 2.5, "epochs: expected an integer, got 2.5"),
        ("max_train_batches", False, "max_train_batches: expected an integer, got false"),
        ("input.shuffle", "no", 'input.shuffle: expected a boolean (true/false), got "no"'),  # before: shuffled
        ("input.shuffle", 0, "input.shuffle: expected a boolean (true/false), got 0"),
        ("optim.dense_lr", "0.1", 'optim.dense_lr: expected a number, got "0.1"'),
        ("optim.dense_lr", True, "optim.dense_lr: expected a number, got true"),
        ("backend", 1, "backend: expected a string, got 1"),
        ("data", ["x"], "data: expected a path string, got list"),
        ("dlrm.bottom_mlp", [16, "8"], 'dlrm.bottom_mlp[]: expected an integer, got "8"'),
        ("embedding.pooling", "MAX", "embedding.pooling: expected one of ['SUM', 'MEAN', 'NONE'], got \"MAX\""),
    ],
)
def test_config_values_of_the_wrong_type_are_refused_by_name(
    tmp_path: Path, path: str, value: object, message: str
) -> None:
    from mlet_dist.config_io import from_jsonable
    from mlet_dist.training.config import TrainConfig

    data = _saved_config(tmp_path)
    node = data
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    with pytest.raises(ValueError) as err:
        from_jsonable(TrainConfig, data, where="config.json")
    assert str(err.value) == f"config.json.{message}"


def test_numbers_keep_their_types_through_a_saved_config(tmp_path: Path) -> None:
    from mlet_dist.config_io import from_jsonable
    from mlet_dist.training.config import TrainConfig

    data = _saved_config(tmp_path)
    data["optim"]["dense_lr"] = 1  # an integer is a number
    data["collective_timeout_s"] = 60
    cfg = from_jsonable(TrainConfig, data)
    assert cfg.optim.dense_lr == 1.0 and isinstance(cfg.optim.dense_lr, float)
    assert isinstance(cfg.collective_timeout_s, float) and isinstance(cfg.data, Path)


def test_train_with_a_mistyped_config_file_says_one_line(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from dist_launch import ROOT

    data = _saved_config(tmp_path)
    data["batch_size"] = True
    config = tmp_path / "config.json"
    config.write_text(json.dumps(data))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "mlet_dist" / "train.py"), "--config", str(config)],
        cwd=ROOT,
        env=dict(env, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --config: {config}.batch_size: expected an integer, got true"
    ], proc.stderr[-2000:]
