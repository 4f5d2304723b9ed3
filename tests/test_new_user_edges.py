"""The rough edges a new user hits first (issue 31): a wrong file given to mlet-prep, progress
bars in a log file, --help without defaults, MLPerf/TorchRec flag names, a finished run rerun."""

import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AVAZU_SAMPLE = ROOT / "data_prep" / "samples" / "avazu_sample.csv"


def run_cli(argv: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / argv[0]), *map(str, argv[1:])], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The refusal's single stderr line (asserting exit 2 and no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(lines) == 1, lines
    assert "error:" in lines[0], lines
    return lines[0]


def test_prep_of_another_datasets_file_is_refused_and_publishes_nothing(tmp_path: Path) -> None:
    """Avazu's CSV given to criteo-kaggle: every row rejected (was: exit 0, an empty dataset)."""
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        line = one_error_line(
            run_cli(["mlet-prep", "criteo-kaggle", AVAZU_SAMPLE, out, "--workers", workers], tmp_path)
        )
        assert "kept 0 of the 9,000 rows of avazu_sample.csv" in line and "column_count: 9,000" in line, line
        assert "avazu_sample.csv:1: expected 40" in line and "nothing was published" in line, line
        assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())  # no staging left


# ----------------------------------------------------------------------------
# mlet-train: no progress bars in a log, a finished run rerun
# ----------------------------------------------------------------------------

TINY = [
    "--batch-size",
    "64",
    "--max-train-batches",
    "4",
    "--max-eval-batches",
    "2",
    "--bottom-mlp",
    "16",
    "--top-mlp",
    "16,1",
    "--no-collapse",
    "--sharding",
    "table_wise",
]


def tiny_run(tmp_path: Path, run_dir: Path) -> Tuple[Path, List[str]]:
    """(train.py, its args): the Criteo sample prepared under tmp_path, TINY training into run_dir."""
    from data_prep.criteo import prepare_criteo_kaggle

    data = tmp_path / "data"
    prepare_criteo_kaggle(ROOT / "data_prep" / "samples" / "criteo_sample.tsv", data)
    return ROOT / "mlet_dist" / "train.py", ["--data", str(data), "--run-dir", str(run_dir), *TINY]


def test_train_log_has_no_progress_bars_and_a_finished_rerun_reprints_its_summary(tmp_path: Path) -> None:
    """stderr a pipe (torchx, a log file): no bars without --no-progress (was: a bar line per redraw).
    Rerun of the finished run: "run already complete" and its summary, nothing retrained or
    rewritten (was: "selected among 0 evaluation point(s)")."""
    from dist_launch import torchrun

    run_dir = tmp_path / "run"
    train, args = tiny_run(tmp_path, run_dir)
    first = torchrun(train, args, nproc=1)
    assert "among 1 evaluation point(s)" in first.stdout, first.stdout
    assert "batch/s" not in first.stderr and "it/s" not in first.stderr and "\r" not in first.stderr, first.stderr
    summary = (run_dir / "summary.json").read_bytes()

    again = torchrun(train, args, nproc=1)
    assert "run already complete" in again.stdout and "among 1 evaluation point(s)" in again.stdout, again.stdout
    assert (run_dir / "summary.json").read_bytes() == summary
    reprinted = again.stdout.split("run already complete")[1].split("\n", 1)[1]
    assert reprinted.strip() == first.stdout.split("\n\n", 1)[1].strip()  # the first run's summary lines


# ----------------------------------------------------------------------------
# --help and foreign flag names
# ----------------------------------------------------------------------------


def _option_helps(parser) -> dict:
    """{first option string: its --help entry on one line} of every option but --help."""
    out = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            out[action.option_strings[0]] = " ".join(parser._get_formatter()._format_action(action).split())
    return out


def _defaults_said(entry: str, invocation: str) -> int:
    """How often a --help entry states a default: "(default: X)", "; default X", or a help text
    that opens with "default" (--run-dir); "the default of the authors' code" is not one."""
    text = entry[len(invocation) :].strip()
    return len(re.findall(r"\(default: |; default[: ]", text)) + bool(re.match(r"default[: ]", text))


def test_every_flag_shows_its_default_once_and_list_flags_their_syntax() -> None:
    """mlet-train, -plan, -predict, -export, -collapse, -sweep (was: --epochs, --seed, --embedding-lr,
    --dense-lr, --top-mlp, --backend, mlet-plan's --device and a third of the others' flags
    without a default; --no-resume with two; [512, 256, 64]; ['fp32', 'fp16', 'int8'])."""
    from mlet_dist.planning.cli import build_parser as plan_parser
    from mlet_dist.serving import collapse_cli, export_cli, predict_cli
    from mlet_dist.sweep.cli import build_parser as sweep_parser
    from mlet_dist.training.config import build_parser as train_parser

    for parser in (
        train_parser(),
        plan_parser(),
        predict_cli.build_parser(),
        export_cli.build_parser(),
        collapse_cli.build_parser(),
        sweep_parser(),
    ):
        for name, text in _option_helps(parser).items():
            action = parser._option_string_actions[name]
            if action.required:
                continue
            invocation = " ".join(parser._get_formatter()._format_action_invocation(action).split())
            assert _defaults_said(text, invocation) == 1, (parser.prog, text)
    assert "(default: fp32 fp16 int8)" in _option_helps(export_cli.build_parser())["--precision"]
    for parser in (train_parser(), plan_parser()):
        helps = _option_helps(parser)
        assert "--bottom-mlp N,N,..." in helps["--bottom-mlp"] and "(default: 512,256,64)" in helps["--bottom-mlp"]
        assert "(default: 512,256,1)" in helps["--top-mlp"]
    train = _option_helps(train_parser())
    for name, default in (("--epochs", "1"), ("--seed", "0"), ("--backend", "auto"), ("--no-collapse", "off")):
        assert f"(default: {default})" in train[name], train[name]
    assert (
        "(default: cuda)" in _option_helps(plan_parser())["--device"]
        and "tables" in _option_helps(plan_parser())["--device"]
    )


def test_torchrec_and_mlperf_flag_names_are_answered_with_ours(tmp_path: Path) -> None:
    """The seven names of issue 31 in one command: one line naming our flag for each (was:
    "unrecognized arguments" and, under torchrun, a traceback)."""
    ours = {
        "--embedding_dim": "--embedding-dim",
        "--learning_rate": "--embedding-lr",
        "--limit_train_batches": "--max-train-batches",
        "--validation_freq_within_epoch": "--eval-every",
        "--over_arch_layer_sizes": "--top-mlp",
        "--dense_arch_layer_sizes": "--bottom-mlp",
        "--interaction_type": "--arch",
    }
    argv = ["mlet-train", "--data", tmp_path]
    for theirs in ours:
        argv += [f"{theirs}=1"] if theirs == "--embedding_dim" else [theirs, "1"]
    line = one_error_line(run_cli(argv, tmp_path, timeout=120))
    for theirs, flag in ours.items():
        assert re.search(f"{theirs} is TorchRec's/MLPerf's name; here: {flag}[ ,]", line), (theirs, line)
    assert "unrecognized" not in line


@pytest.mark.parametrize("content", ['{"model": "mlet"}', "[1, 2]", "{not json"])
def test_a_finished_runs_unusable_summary_is_one_error_line(content: str, tmp_path: Path) -> None:
    """summary.json edited or truncated: one error line naming the file and --no-resume (a KeyError
    or TypeError traceback from the reprint otherwise)."""
    import torch

    from mlet_dist.distributed.env import DistEnv
    from mlet_dist.training.finish import finished_summary
    from mlet_dist.training.checkpoint import TrainPosition
    from mlet_dist.training.config import parse_args

    cfg = parse_args(["--data", str(tmp_path), "--run-dir", str(tmp_path / "run")])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(content)
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(SystemExit) as stop:
        finished_summary(cfg, TrainPosition(step=4, epoch=1), env)
    message = str(stop.value.code)
    assert message.startswith("error: run already complete, but ") and "summary.json" in message, message
    assert message.endswith("rerun with --no-resume to train afresh") and "\n" not in message
