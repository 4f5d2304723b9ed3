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


def test_resume_on_another_world_size(data: Path, tmp_path: Path) -> None:
    """A 2-rank job dies after its step-2 checkpoint; the run resumes on 1 rank (DCP reshards the
    tables and optimizer state) at the same row of the epoch, or refuses a batch size that cannot
    cut the epoch there."""
    import subprocess
    import sys

    run = tmp_path / "resharded"
    with pytest.raises(AssertionError):  # no restarts allowed: the job fails at step 3
        torchrun(TRAIN, ["--data", str(data), "--run-dir", str(run), *ARGS], env_extra={"MLET_FAULT": "step:3:1"})
    assert (run / "checkpoints" / "step-00000002" / "train_state.json").is_file()

    def one_rank(batch_size: str) -> subprocess.CompletedProcess:
        args = [a if a != "64" else batch_size for a in ARGS]  # global batch was 2 x 64 rows
        return subprocess.run([sys.executable, str(TRAIN), "--data", str(data), "--run-dir", str(run), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={k: v for k, v in __import__("os").environ.items()
                                   if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")})

    refused = one_rank("96")
    assert refused.returncode != 0 and "not a multiple of this job's global batch (96 rows)" in refused.stderr
    assert "Traceback" not in refused.stderr
    resumed = one_rank("64")  # 256 rows done = batch 4 of 64-row batches
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "(epoch 0, batch 2, step 2)" in resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 1
    # --max-train-batches 8 caps the epoch at 8 batches of this job's size (64 rows); 4 were done.
    assert summary["steps"] == 2 + (8 - 4)
