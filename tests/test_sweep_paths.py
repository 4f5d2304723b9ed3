"""Sweep examples write under runs/ unless asked (issue 21, bug 3): running a shipped config must
not overwrite the committed reports/<name>/."""

from pathlib import Path

import pytest

from dist_launch import ROOT
from mlet_dist.sweep.cli import build_parser
from mlet_dist.sweep.config import from_dict, load_config

CONFIGS = sorted((ROOT / "configs").glob("sweep_*.yaml"))


def _under(path: Path, top: str) -> bool:
    return not path.is_absolute() and path.parts[0] == top


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_configs_write_under_runs(config: Path) -> None:
    cfg = load_config(config)
    assert _under(cfg.runs_dir, "runs") and _under(cfg.report_dir, "runs"), (cfg.runs_dir, cfg.report_dir)


def test_default_report_dir_is_in_the_runs_dir() -> None:
    cfg = from_dict({"name": "x", "data": "runs/data/x"})
    assert cfg.report_dir == Path("runs/sweeps/x/report")


def test_report_dir_flag_still_refreshes_a_committed_report() -> None:
    args = build_parser().parse_args(["--config", str(CONFIGS[0]), "--report-dir", "reports/tiny_planted"])
    cfg = load_config(args.config, {"report_dir": str(args.report_dir)})
    assert cfg.report_dir == Path("reports/tiny_planted")
