"""The used-by job (issue 26 item 3): `torchx run -s local_cwd launch/components.py:train -j 2x8`,
2 replicas x 8 gloo ranks joined by torchx's c10d rendezvous, on the shipped Criteo sample, with a
row-wise plan (every table's rows over all 16 ranks, across both nodes) and a collapse; then the
same run dir resumed by a 1x2 job, on 2 ranks instead of 16. (Table-row-wise MLET tables across
nodes are refused by sharded_mlet with one error line, "must span all ranks for now".)"""

import json
import subprocess
from pathlib import Path
from typing import List

import pytest

from dist_launch import torchx_run
from training_runs import prepared_sample_by_cli


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_sample_by_cli(tmp_path_factory, "launch_2x8", "--no-progress")


def torchx_train(shape: str, logs: Path, script_args: List[str]) -> subprocess.CompletedProcess:
    """The runbook's command, from the repo root (so that .torchxconfig applies)."""
    return torchx_run(["launch/components.py:train", "-j", shape], script_args, log_dir=logs)


def replica_logs(logs: Path) -> str:
    return "".join(p.read_text() for p in sorted(logs.rglob("trainer/*/std*.log")))


def test_2x8_trains_row_wise_across_nodes_collapses_and_resumes_on_2_ranks(sample_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = [
        "--data",
        str(sample_data),
        "--run-dir",
        str(run),
        "--batch-size",
        "32",
        "--no-progress",
        "--max-train-batches",
        "6",
        "--max-eval-batches",
        "2",
    ]
    first = torchx_train("2x8", tmp_path / "logs16", [*common, "--sharding", "row_wise"])
    log = first.stdout + first.stderr
    assert first.returncode == 0 and "Job finished: SUCCEEDED" in log, (
        log[-3000:] + replica_logs(tmp_path / "logs16")[-3000:]
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 16 and summary["steps"] == 6
    config = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    tables = config["plan"].split("\n\n")[1].splitlines()[2:]  # TorchRec's table | type | kernel | ranks
    assert config["world_size"] == 16 and len(tables) == 26
    for line in tables:  # every table over ranks 0..15: both nodes
        param, kind, _, ranks = (cell.strip() for cell in line.split("|"))
        assert kind == "row_wise" and ranks == str(list(range(16))), line
    # the collapse: a serving dir whose stock-TorchRec predictions equal the trained model's
    assert Path(summary["serving_dir"]).is_dir() and summary["collapsed_max_abs_prediction_diff"] < 1e-5

    second = torchx_train("1x2", tmp_path / "logs2", [*common, "--epochs", "2", "--no-collapse"])
    log2 = second.stdout + second.stderr + replica_logs(tmp_path / "logs2")
    assert second.returncode == 0 and "Job finished: SUCCEEDED" in log2, log2[-4000:]
    assert f"resuming from {run / 'checkpoints'}" in log2, log2[-3000:]
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["world_size"] == 2 and resumed["steps"] == 12 and resumed["epochs"] == 2
