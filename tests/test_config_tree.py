"""The run configuration as one typed tree: saved as config.json, reloaded exactly, reusable with
--config (flags given on the command line win), and what mlet-collapse builds the model from."""

import json
from pathlib import Path

import pytest

from mlet_dist.config_io import from_jsonable, load_config, save_config, to_jsonable
from mlet_dist.training.config import FLAG_FIELDS, TrainConfig, build_parser, parse_args

FLAGS = ["--data", "data/x", "--run-dir", "runs/a", "-k", "128", "-d", "8", "--epochs", "3",
         "--dense-lr", "0.002", "--no-shuffle", "--arch", "dcnv2", "--bottom-mlp", "32,16"]


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    cfg = parse_args(FLAGS)
    save_config(tmp_path / "config.json", cfg)
    again = load_config(TrainConfig, tmp_path / "config.json")
    assert again == cfg
    assert again.embedding.inner_dim == 128 and again.input.shuffle is False and again.dlrm.bottom_mlp == [32, 16]


def test_config_file_with_overriding_flags(tmp_path: Path) -> None:
    save_config(tmp_path / "config.json", parse_args(FLAGS))
    cfg = parse_args(["--config", str(tmp_path / "config.json"), "--epochs", "1", "--dense-lr", "0.01"])
    assert cfg.epochs == 1  # given, even though 1 is the flag's default
    assert cfg.optim.dense_lr == 0.01
    assert cfg.embedding.inner_dim == 128 and cfg.embedding.embedding_dim == 8 and cfg.arch == "dcnv2"
    assert cfg.data == Path("data/x")
    assert cfg.run_dir != Path("runs/a") and not cfg.run_dir_given  # where to run is this command's choice


def test_every_flag_says_which_fields_it_sets() -> None:
    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert dests == set(FLAG_FIELDS), f"unmapped {dests - set(FLAG_FIELDS)}, stale {set(FLAG_FIELDS) - dests}"
    tree = to_jsonable(parse_args(["--data", "x"]))
    for dest, paths in FLAG_FIELDS.items():
        for path in paths:
            node = tree
            for key in path.split("."):
                assert key in node, f"--{dest} names {path}, which TrainConfig does not have"
                node = node[key]


def test_unknown_key_is_refused_with_its_name(tmp_path: Path) -> None:
    data = to_jsonable(parse_args(["--data", "x"]))
    data["embedding"]["inner_dimm"] = 32
    with pytest.raises(ValueError, match="inner_dimm"):
        from_jsonable(TrainConfig, data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="--config: .*inner_dimm"):
        parse_args(["--config", str(tmp_path / "bad.json")])


def test_old_runs_collapse_after_a_flag_is_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mlet-collapse rebuilds the model from config.json, not by replaying the run's argv through
    today's parser: with a training flag renamed, an old run still yields its model config."""
    from mlet_dist.serving import collapse_cli
    from mlet_dist.training import config as config_module

    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    cfg = parse_args(["--data", str(data), "--run-dir", str(run), "-k", "96", "-d", "12"])
    save_config(run / "config.json", cfg)
    (run / "metrics.jsonl").write_text(json.dumps({"event": "config", "argv": ["--data", str(data), "-k", "96"]}) + "\n")

    original = config_module.build_parser

    def renamed() -> object:  # today's parser calls the flag --wide-dim: the old argv no longer parses
        p = original()
        for action in p._actions:
            if action.dest == "inner_dim":
                action.option_strings = ["--wide-dim"]
        p._option_string_actions = {s: a for a in p._actions for s in a.option_strings}
        return p

    monkeypatch.setattr(config_module, "build_parser", renamed)
    with pytest.raises(SystemExit):
        config_module.parse_args(["--data", str(data), "-k", "96"])  # the replay would fail
    got = collapse_cli.training_config(run, None)
    assert got.embedding.inner_dim == 96 and got.embedding.embedding_dim == 12


def test_metrics_include_normalized_entropy_and_calibration() -> None:
    import math

    import torch

    from mlet_dist.training.evaluation import Predictions

    labels = torch.tensor([1.0, 0.0, 0.0, 0.0])
    probs = torch.tensor([0.6, 0.2, 0.1, 0.3])
    m = Predictions(probs, labels).metrics()
    logloss = -(math.log(0.6) + math.log(0.8) + math.log(0.9) + math.log(0.7)) / 4
    base = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert m["logloss"] == pytest.approx(logloss)
    assert m["ne"] == pytest.approx(logloss / base)
    assert m["calibration"] == pytest.approx(0.3 / 0.25)
    base_rate = Predictions(torch.full((4,), 0.25), labels).metrics()
    assert base_rate["ne"] == pytest.approx(1.0) and base_rate["calibration"] == pytest.approx(1.0)
