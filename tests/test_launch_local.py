"""The local runbook for real: `torchx run -s local_cwd launch/components.py:train -j 1x2` on the
shipped Criteo sample (CPU, gloo), from the repo root so that .torchxconfig applies."""

import json

import pytest

from dist_launch import torchx_run
from training_runs import prepared_sample_by_cli

TRAIN_1X2 = ["launch/components.py:train", "-j", "1x2"]


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    return prepared_sample_by_cli(tmp_path_factory, "launch")


def test_local_cwd_1x2_run(sample_data, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "--data",
        str(sample_data),
        "--run-dir",
        str(run_dir),
        "--batch-size",
        "128",
        "--max-train-batches",
        "3",
        "--max-eval-batches",
        "2",
        "--log-every",
        "1",
        "--no-progress",
        "--no-collapse",
    ]
    out = torchx_run([*TRAIN_1X2, "--cpu", "2"], args, log_dir=tmp_path / "logs", timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "Job finished: SUCCEEDED" in log, log[-4000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events[0] == "config" and events.count("train") == 3 and "epoch" in events
    tb_files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(tb_files) == 1, "rank 0 only writes TensorBoard events"
    # torchx's replica logs land under the -cfg log_dir
    assert list((tmp_path / "logs").rglob("trainer/0/stdout.log"))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/auc", "test/auc", "throughput/samples_per_s"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]


def test_local_cwd_missing_data_fails_with_the_node_message(tmp_path):
    missing = tmp_path / "not-prepared"
    out = torchx_run(TRAIN_1X2, ["--data", str(missing)], log_dir=tmp_path / "logs", timeout=120)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and "Job finished: FAILED" in log, log[-3000:]
    stderr = next((tmp_path / "logs").rglob("trainer/0/stderr.log")).read_text()
    assert "mlet launch error on node" in stderr and f"no prepared dataset at {missing}" in stderr
