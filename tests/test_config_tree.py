"""The run configuration as one typed tree: saved as config.json, reloaded exactly, reusable with
--config (flags given on the command line win), and what mlet-collapse builds the model from.
Its flags are derived from the tree's field declarations (config_flags.py)."""

import dataclasses
import json
from pathlib import Path

import pytest

from mlet_dist.config_flags import SHAPE, Flag, NoFlag, declarations, written_paths
from mlet_dist.config_io import from_jsonable, load_config, save_config, to_jsonable, with_leaves
from mlet_dist.distributed.sharding import ShardingConfig
from mlet_dist.models.dcn import DCNConfig
from mlet_dist.models.dlrm import DLRMConfig
from mlet_dist.models.embedding_tables import EmbeddingSpec
from mlet_dist.models.ranking import ModelConfig
from mlet_dist.training.config import InputConfig, TrainConfig, build_parser, parse_args
from mlet_dist.training.optim import OptimConfig

FLAGS = [
    "--data",
    "data/x",
    "--run-dir",
    "runs/a",
    "-k",
    "128",
    "-d",
    "8",
    "--epochs",
    "3",
    "--dense-lr",
    "0.002",
    "--no-shuffle",
    "--arch",
    "dcnv2",
    "--bottom-mlp",
    "32,16",
]


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


def test_every_flag_comes_from_a_field_and_every_field_has_one() -> None:
    """The parser holds exactly the declared flags (plus --config), every leaf field of the tree
    declares a flag or why it has none, and each flag writes fields the tree has."""
    declared = list(declarations(TrainConfig))
    missing = [d.path for d in declared if not isinstance(d.flag, (Flag, NoFlag))]
    assert not missing, f"fields with no flag and no no_flag(why): {missing}"
    from_fields = {d.flag.dest for d in declared if isinstance(d.flag, Flag) and d.flag.names}
    dests = {a.dest for a in build_parser()._actions} - {"help", "config"}
    assert dests == from_fields, f"not from a field: {dests - from_fields}, declared but absent: {from_fields - dests}"
    tree = to_jsonable(parse_args(["--data", "x"]))
    for dest, paths in written_paths(TrainConfig).items():
        assert dest in dests, f"a field reads --{dest}, which the parser does not have"
        for path in paths:
            node = tree
            for key in path.split("."):
                assert key in node, f"--{dest} names {path}, which TrainConfig does not have"
                node = node[key]
    assert written_paths(TrainConfig)["model"] == ("embedding.mlet", "collapse")  # --model baseline: no collapse


def test_a_flag_declared_for_a_missing_field_is_refused() -> None:
    """nested(...) naming a field the class does not have (a typo, a removed field) fails loudly."""
    from mlet_dist.config_flags import flag, nested

    @dataclasses.dataclass
    class Tree:
        dcn: DCNConfig = dataclasses.field(default_factory=DCNConfig, metadata=nested(low_rnk=flag("--rank")))

    with pytest.raises(TypeError, match=r"flags declared for dcn\.low_rnk, which DCNConfig does not have"):
        list(declarations(Tree))


def _by_hand(**kw: object) -> TrainConfig:
    """The TrainConfig the hand-written parser (before the flags were derived) built for
    ``--data x --run-dir r`` plus the changes in ``kw``; --check-inputs absent means no checks."""
    kw.setdefault("embedding", EmbeddingSpec(validate_inputs=False))
    return TrainConfig(data=Path("x"), run_dir=Path("r"), **kw)  # type: ignore[arg-type]


BASE = ["--data", "x", "--run-dir", "r"]
NEGATED = [
    *BASE,
    "--model",
    "baseline",
    "--no-shuffle",
    "--projection-after-comm",
    "--no-resume",
    "--no-progress",
    "--check-inputs",
]
SHAPED = [
    *BASE,
    "-k",
    "128",
    "-d",
    "8",
    "--arch",
    "dcnv2",
    "--bottom-mlp",
    "32,16",
    "--dcn-low-rank",
    "0",
    "--dense-lr",
    "0.002",
    "--no-collapse",
    "--epochs",
    "3",
    "--data-order",
    "exact",
    "--plan",
    "p.json",
    "--max-train-batches",
    "7",
    "--mlet-init",
    "matched",
    "--sharding",
    "row_wise",
    "--seed",
    "5",
]


EXPECTED = {  # built by hand: what the hand-written parser (before the flags were derived) gave
    "defaults": _by_hand(),
    "negated": _by_hand(
        embedding=EmbeddingSpec(mlet=False, validate_inputs=True),
        collapse=False,
        input=InputConfig(shuffle=False),
        sharding=ShardingConfig(owner_projection=False),
        resume=False,
        progress=False,
    ),
    "shaped": _by_hand(
        embedding=EmbeddingSpec(embedding_dim=8, inner_dim=128, mlet_init="matched", validate_inputs=False),
        arch="dcnv2",
        dlrm=DLRMConfig(bottom_mlp=[32, 16]),
        dcn=DCNConfig(low_rank=0),
        optim=OptimConfig(dense_lr=0.002),
        collapse=False,
        epochs=3,
        input=InputConfig(order="exact"),
        plan=Path("p.json"),
        max_train_batches=7,
        sharding=ShardingConfig("row_wise"),
        seed=5,
    ),
}


@pytest.mark.parametrize("name,argv", [("defaults", BASE), ("negated", NEGATED), ("shaped", SHAPED)])
def test_argv_gives_the_config_the_hand_written_parser_gave(name: str, argv: list) -> None:
    assert parse_args(argv) == EXPECTED[name]


@pytest.mark.parametrize(
    "saved,argv,changes",
    [
        # given flags win, negated ones included; --model writes collapse too (a baseline run had none)
        (
            "negated",
            ["--model", "mlet", "-k", "32", "--epochs", "2"],
            {"embedding": EmbeddingSpec(inner_dim=32, validate_inputs=True), "collapse": True, "epochs": 2},
        ),
        (
            "shaped",
            ["--no-shuffle", "--projection-after-comm", "--data", "y"],
            {
                "input": InputConfig(order="exact", shuffle=False),
                "sharding": ShardingConfig("row_wise", owner_projection=False),
                "data": Path("y"),
            },
        ),
        ("shaped", ["--model", "mlet"], {"collapse": True}),  # as before: --model mlet without --no-collapse collapses
    ],
    ids=["negated-run", "negating-flags", "model-rewrites-collapse"],
)
def test_config_override_gives_what_the_hand_written_rule_gave(
    tmp_path: Path, saved: str, argv: list, changes: dict
) -> None:
    save_config(tmp_path / "config.json", EXPECTED[saved])
    got = parse_args(["--config", str(tmp_path / "config.json"), *argv])
    assert not got.run_dir_given and got.run_dir != Path("r")  # where to run is this command's choice, not the file's
    assert got == dataclasses.replace(EXPECTED[saved], run_dir=got.run_dir, run_dir_given=False, **changes)


def test_mlet_plan_has_the_model_flags_of_mlet_train() -> None:
    """mlet-plan derives its model flags from the same declarations (ModelConfig's fields)."""
    from mlet_dist.planning.cli import build_parser as plan_parser

    def described(parser: object) -> dict:
        keys = ("option_strings", "default", "choices", "help", "type")
        return {a.dest: [getattr(a, k) for k in keys] for a in parser._actions}  # type: ignore[attr-defined]

    shape = set(written_paths(ModelConfig, groups=(SHAPE,)))
    assert shape == {
        "model",
        "embedding_dim",
        "inner_dim",
        "bottom_mlp",
        "top_mlp",
        "arch",
        "dcn_layers",
        "dcn_low_rank",
    }
    train, plan = described(build_parser()), described(plan_parser())
    assert {d: plan[d] for d in shape} == {d: train[d] for d in shape}


def test_model_leaves_are_set_by_name() -> None:
    model = with_leaves(ModelConfig(), {"inner_dim": 32, "embedding_dim": 4, "mlet": False, "cross_layers": 2})
    assert model == ModelConfig(embedding=EmbeddingSpec(4, 32, mlet=False), dcn=DCNConfig(cross_layers=2))
    with pytest.raises(TypeError, match="'inner_dimm' is not a field of ModelConfig"):
        with_leaves(ModelConfig(), {"inner_dimm": 32})
    with pytest.raises(ValueError, match="--inner-dim k=8"):  # the tree's own checks run on the result
        with_leaves(ModelConfig(), {"inner_dim": 8})


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
    (run / "metrics.jsonl").write_text(
        json.dumps({"event": "config", "argv": ["--data", str(data), "-k", "96"]}) + "\n"
    )

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
    got = collapse_cli.run_model(run, None).model
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
