"""TensorBoard event files next to metrics.jsonl (mlet_dist/training/run_dir.py), rank 0 only."""

import json

import pytest

from mlet_dist.training.run_dir import RunDirectory, tensorboard_scalars

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_scalars(logdir):
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


EPOCH = dict(
    epoch=0,
    step=20,
    train_loss=0.5,
    samples_per_s=1000.0,
    val={"auc": 0.7, "logloss": 0.45, "accuracy": 0.78, "rows": 512},
    test={"auc": 0.69, "logloss": 0.46, "accuracy": 0.77, "rows": 512},
    embedding_lookup_ms=3.5,
    timing={"all_to_all_ms": 1.25},
)


def test_tags():
    assert tensorboard_scalars("config", {"world_size": 2}) == (None, {})
    assert tensorboard_scalars("train", {"step": 7, "loss": 0.6}) == (7, {"train/loss": 0.6})
    step, scalars = tensorboard_scalars("epoch", EPOCH)
    assert step == 20
    assert scalars == {
        "train/epoch_loss": 0.5,
        "throughput/samples_per_s": 1000.0,
        "val/auc": 0.7,
        "val/logloss": 0.45,
        "val/accuracy": 0.78,
        "test/auc": 0.69,
        "test/logloss": 0.46,
        "test/accuracy": 0.77,
        "timing/embedding_lookup_ms": 3.5,
        "timing/all_to_all_ms": 1.25,
    }


def test_rank0_writes_events_and_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    run = RunDirectory(tmp_path / "run", enabled=True)
    run.log("config", world_size=2)
    for step in (1, 2):
        run.log("train", step=step, loss=1.0 / step)
    run.log("epoch", **EPOCH)
    run.write_json("summary.json", {"steps": 2})
    run.close()

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["config", "train", "train", "epoch"]
    assert records[0]["restart_count"] == 0
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    assert scalars["train/loss"] == [(1, 1.0), (2, 0.5)]
    assert scalars["val/auc"] == [(20, pytest.approx(0.7))]
    assert scalars["throughput/samples_per_s"] == [(20, 1000.0)]
    assert scalars["timing/embedding_lookup_ms"] == [(20, 3.5)]


def test_other_ranks_write_nothing(tmp_path):
    run = RunDirectory(tmp_path / "run", enabled=False)
    run.log("train", step=1, loss=0.5)
    run.write_json("summary.json", {})
    run.close()
    assert not (tmp_path / "run").exists()


def test_restart_replaces_the_failed_attempt_in_tensorboard(tmp_path, monkeypatch):
    first = RunDirectory(tmp_path, enabled=True)
    for step in (1, 2, 3):
        first.log("train", step=step, loss=9.0)
    first.close()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = RunDirectory(tmp_path, enabled=True)
    second.log("config", world_size=2)
    second.log("train", step=1, loss=0.5)
    second.close()
    assert read_scalars(tmp_path / "tensorboard")["train/loss"] == [(1, 0.5)]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 5 and records[3]["restart_count"] == 1


def test_tensorboard_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("MLET_TENSORBOARD", "0")
    run = RunDirectory(tmp_path, enabled=True)
    run.log("train", step=1, loss=0.5)
    run.close()
    assert (tmp_path / "metrics.jsonl").is_file() and not (tmp_path / "tensorboard").exists()
