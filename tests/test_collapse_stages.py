"""mlet-collapse's stages at scale (issue 26): the model it builds only to load a checkpoint into
is not randomly initialised (at Criteo-Kaggle size that was 2 x 8.6 GB of random numbers, the
largest stage), and each long stage says so on stderr (``StageLog``), when stderr is a terminal or ``--progress`` asks."""

import functools
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from data_prep.progress import StageLog
from dist_launch import ROOT
from mlet_dist.serving import collapse_cli, load_serving_model
from mlet_dist.serving.no_random_init import NoRandomInit
from test_serving import _tiny_run, logits_criteo

COLLAPSE_STAGES = (
    "verify step-00000003's checksums",
    "build and shard the k-wide model",
    "load step-00000003",
    "plan the serving model",
    "collapse T·W",
    "write the d-wide checkpoint",
    "sha256 of the written files",
)


@pytest.fixture(scope="module")
def criteo(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from data_prep.criteo import prepare_criteo_kaggle

    data = tmp_path_factory.mktemp("criteo") / "data"
    prepare_criteo_kaggle(str(ROOT / "data_prep/samples/criteo_sample.tsv"), data)
    return SimpleNamespace(data=data, meta=json.loads((data / "meta.json").read_text()))


@pytest.fixture
def one_rank_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables torchrun would set, undone after the test (init_distributed sets them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in dict(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    ).items():
        monkeypatch.setenv(name, value)


def test_collapse_draws_no_random_init_and_serves_the_trained_model(criteo, tmp_path: Path, one_rank_env) -> None:
    run, model = _tiny_run(criteo, tmp_path)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    collapse_cli.main(["--run-dir", str(run), "--out", str(run / "serving")])
    assert torch.equal(torch.get_rng_state(), before), "mlet-collapse drew random numbers (an init it overwrites)"
    served, _ = load_serving_model(run / "serving")
    assert (logits_criteo(served, criteo) - logits_criteo(model, criteo)).abs().max() <= 1e-5


def test_no_random_init_skips_only_random_fills() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with NoRandomInit():
        layer = torch.nn.Linear(4, 3)
        torch.nn.init.normal_(layer.weight)
        torch.nn.init.zeros_(layer.bias)  # deterministic fills still run
        steps = torch.arange(5.0)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(layer.bias, torch.zeros(3)) and torch.equal(steps, torch.tensor([0.0, 1, 2, 3, 4]))


def test_collapse_prints_a_line_per_long_stage_and_none_with_no_progress(
    criteo, tmp_path: Path, one_rank_env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run, _ = _tiny_run(criteo, tmp_path)
    monkeypatch.setattr(collapse_cli, "StageLog", functools.partial(StageLog, after_s=0.0))  # every stage is "long"
    collapse_cli.main(["--run-dir", str(run), "--out", str(tmp_path / "a"), "--progress"])
    err = capsys.readouterr().err
    for stage in COLLAPSE_STAGES:
        assert f"mlet-collapse: {stage}: done in " in err, err
    collapse_cli.main(["--run-dir", str(run), "--out", str(tmp_path / "b"), "--no-progress"])
    assert "mlet-collapse:" not in capsys.readouterr().err
    collapse_cli.main(["--run-dir", str(run), "--out", str(tmp_path / "c")])  # stderr is no terminal here
    assert "mlet-collapse:" not in capsys.readouterr().err


def _lines(capsys: pytest.CaptureFixture) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_stage_log_is_silent_for_quick_stages_and_speaks_for_long_ones(capsys: pytest.CaptureFixture) -> None:
    log = StageLog("prog", after_s=0.2, every_s=0.05)
    with log.stage("quick"):
        log.tick(1, 2, "tables")
    assert _lines(capsys) == []
    with log.stage("slow"):
        time.sleep(0.3)  # the timer announces it while it runs
        log.tick(1, 2, "tables")
        log.tick(2, 2, "tables")  # within every_s of the last line: not shown
    lines = _lines(capsys)
    assert lines[:2] == ["prog: slow ...", "prog: slow: 1/2 tables"] and len(lines) == 3, lines
    assert lines[2].startswith("prog: slow: done in 0.")
    with StageLog("prog", enabled=False, after_s=0.0).stage("off"):
        time.sleep(0.05)
    assert _lines(capsys) == []


# --- mlet-export and the serving loaders -------------------------------------------------------

EXPORT_STAGES = ("check and load", "write weights.safetensors", "fp32 predict module", "sha256 of the artifact files")


@pytest.fixture(scope="module")
def serving_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlet_dist.serving import write_serving_dir
    from test_serving import small_config, trained_small_model

    out = tmp_path_factory.mktemp("small") / "serving"
    return write_serving_dir(trained_small_model(), out, small_config()).path


def test_serving_loaders_draw_no_random_init(serving_dir: Path, one_rank_env) -> None:
    from mlet_dist.distributed.env import init_distributed, shutdown_distributed
    from mlet_dist.serving import load_serving_sharded

    torch.manual_seed(0)
    before = torch.get_rng_state()
    load_serving_model(serving_dir)
    assert torch.equal(torch.get_rng_state(), before), "load_serving_model drew an init it overwrites"
    init_distributed("gloo")
    try:
        load_serving_sharded(serving_dir)
    finally:
        shutdown_distributed()
    assert torch.equal(torch.get_rng_state(), before), "load_serving_sharded drew an init it overwrites"


def test_export_holds_one_copy_of_the_model_at_a_time(
    serving_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import weakref

    from mlet_dist.serving import export_artifact as artifact_module

    loaded: list = []

    def load_one(*args: object, **kwargs: object) -> tuple:
        gc.collect()
        alive = [i for i, ref in enumerate(loaded) if ref() is not None]
        assert not alive, f"load {len(loaded)} while the models of loads {alive} are still held"
        model, sd = load_serving_model(*args, **kwargs)  # type: ignore[arg-type]
        loaded.append(weakref.ref(model))
        return model, sd

    monkeypatch.setattr(artifact_module, "load_serving_model", load_one)
    artifact_module.export_artifact(serving_dir, tmp_path / "artifact", ("fp32", "int8"))
    assert len(loaded) == 3


def test_export_prints_a_line_per_long_stage_and_none_with_no_progress(
    serving_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mlet_dist.serving import export_cli

    monkeypatch.setattr(export_cli, "StageLog", functools.partial(StageLog, after_s=0.0))
    export_cli.main([str(serving_dir), str(tmp_path / "a"), "--precision", "fp32", "--progress"])
    err = capsys.readouterr().err
    for stage in EXPORT_STAGES:
        assert f"mlet-export: {stage}" in err and err.count(": done in ") >= len(EXPORT_STAGES), err
    export_cli.main([str(serving_dir), str(tmp_path / "b"), "--precision", "fp32", "--no-progress"])
    assert "mlet-export:" not in capsys.readouterr().err
    export_cli.main([str(serving_dir), str(tmp_path / "c"), "--precision", "fp32"])  # stderr is no terminal here
    assert "mlet-export:" not in capsys.readouterr().err
