"""Training survives a lost rank: torchrun --max-restarts 1 restarts the job, which resumes from
the newest complete checkpoint and ends with weights and optimizer state bit-identical to an
uninterrupted run (CPU, gloo, fixed data order). A rank killed while a checkpoint is being
written leaves a torn ``.tmp`` directory that is never loaded."""

import json
from pathlib import Path
from typing import Dict

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from data_prep.criteo_kaggle import prepare_criteo_kaggle
from dist_launch import ROOT, torchrun

TRAIN = ROOT / "mlet_dist" / "train.py"
SAMPLE = ROOT / "data_prep" / "samples" / "criteo_sample.tsv"
ARGS = ["--batch-size", "64", "--max-train-batches", "8", "--max-eval-batches", "2", "--no-progress",
        "--bottom-mlp", "32,16", "--top-mlp", "32,1", "--checkpoint-every", "2", "--no-collapse",
        "--sharding", "table_wise", "--embedding-optimizer", "rowwise_adagrad", "--dense-optimizer", "adam"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fault") / "criteo"
    prepare_criteo_kaggle(SAMPLE, out)
    return out


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("fault") / "clean"
    torchrun(TRAIN, ["--data", str(data), "--run-dir", str(run), *ARGS])
    return run


def _final_state(run: Path, tmp: Path) -> Dict[str, torch.Tensor]:
    final = run / "checkpoints" / "step-00000008"
    assert (final / "train_state.json").is_file(), sorted(p.name for p in (run / "checkpoints").iterdir())
    out = tmp / f"{run.name}.pt"
    dcp_to_torch_save(str(final), str(out))
    flat: Dict[str, torch.Tensor] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, torch.Tensor):
            flat[prefix] = node

    walk("", torch.load(out, weights_only=True))
    return flat


def _assert_identical(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    assert any(k.startswith("optim.") for k in a), "optimizer state is part of the checkpoint"
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def _restart_run(data: Path, run: Path, fault: str) -> str:
    proc = torchrun(TRAIN, ["--data", str(data), "--run-dir", str(run), *ARGS],
                    launcher_args=["--max-restarts", "1"], env_extra={"MLET_FAULT": fault})
    return proc.stdout + proc.stderr


def test_killed_rank_resumes_bit_identical(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "faulty"
    log = _restart_run(data, run, "step:5:1")
    assert "[fault injection] rank 1 exits at step 5" in log
    assert "resuming from" in log and "step-00000004" in log
    resumed = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["checkpoint"] for e in resumed if e["event"] == "resume"] == ["step-00000004"]
    _assert_identical(_final_state(uninterrupted, tmp_path), _final_state(run, tmp_path))


def test_rank_killed_during_checkpoint_write_never_loads_torn_checkpoint(
    data: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    run = tmp_path / "torn"
    log = _restart_run(data, run, "checkpoint:6:1")
    assert "[fault injection] rank 1 exits at checkpoint 6" in log
    assert "incomplete checkpoint(s) ['.step-00000006.tmp']" in log
    assert "step-00000004" in log.split("resuming from", 1)[1].splitlines()[0]
    assert not list((run / "checkpoints").glob(".*.tmp"))
    _assert_identical(_final_state(uninterrupted, tmp_path), _final_state(run, tmp_path))


def test_finished_run_resumes_to_the_end_without_training(data: Path, uninterrupted: Path) -> None:
    before = json.loads((uninterrupted / "summary.json").read_text())
    proc = torchrun(TRAIN, ["--data", str(data), "--run-dir", str(uninterrupted), *ARGS])
    assert "resuming from" in proc.stdout + proc.stderr
    after = json.loads((uninterrupted / "summary.json").read_text())
    assert after["steps"] == before["steps"] == 8
    assert after["trained"] == before["trained"]
