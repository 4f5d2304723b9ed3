"""Damaged and hostile training checkpoints (2 gloo ranks, torchrun).

A finished 8-step run keeps checkpoints step-6 and step-8. Each case damages step-8 of a copy the
way a disk, a crash or an attacker could; the rerun must report and skip it, resume from step-6,
never run code from the checkpoint, and end bit-identical to the undamaged run (resuming from
step-6 replays steps 7-8 exactly: the data order and every RNG are restored).
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch

from dist_launch import ROOT, torchrun
import test_fault_tolerance
from test_fault_tolerance import ARGS, TRAIN, _assert_identical, _final_state

from mlet_dist.distributed.safe_dcp import SafeFileSystemReader, SafeLoadPlanner, UnsafeCheckpointError, safe_load
from mlet_dist.digests import file_entry
from mlet_dist.training.checkpoint_digest import CHECKSUMS, verify_share

# The fault-tolerance run's module-scoped fixtures, bound by assignment: pytest finds them by name in
# this module, and an import of them would read to a linter as redefined by each test's parameter.
data, uninterrupted = test_fault_tolerance.data, test_fault_tolerance.uninterrupted

PAYLOAD_MARK = "mlet-payload-ran"


class _Payload:
    """Unpickling this object writes a marker file: proof that code from the checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (Path.write_text, (self.marker, PAYLOAD_MARK))


def _flip_a_byte(ckpt: Path) -> None:
    shard = ckpt / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))


def _delete_a_shard(ckpt: Path) -> None:
    (ckpt / "__0_0.distcp").unlink()


def _truncate_metadata(ckpt: Path) -> None:
    meta = ckpt / ".metadata"
    meta.write_bytes(meta.read_bytes()[:100])


def _break_train_state(ckpt: Path) -> None:
    (ckpt / "train_state.json").write_text('{"step": 8, "epoch":')


def _delete_checksums_and_flip_a_byte(ckpt: Path) -> None:
    """Without checksums.json the flipped byte could only be caught by verification refusing
    the checkpoint as a whole: loaded, it would end with other weights."""
    (ckpt / CHECKSUMS).unlink()
    _flip_a_byte(ckpt)


def _plant_pickle_with_matching_checksums(ckpt: Path) -> None:
    """The attacker rewrites checksums.json too: only the safe reader stands in the way."""
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(ckpt.parent.parent / "PWNED")))
    sums = json.loads((ckpt / CHECKSUMS).read_text())
    sums[".metadata"] = file_entry(ckpt / ".metadata")
    (ckpt / CHECKSUMS).write_text(json.dumps(sums))


DAMAGE: Dict[str, Callable[[Path], None]] = {
    "bit_flip_in_shard": _flip_a_byte,
    "deleted_shard": _delete_a_shard,
    "deleted_checksums": _delete_checksums_and_flip_a_byte,
    "truncated_metadata": _truncate_metadata,
    "invalid_train_state": _break_train_state,
    "malicious_pickle": _plant_pickle_with_matching_checksums,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_skipped_for_the_older_one(
    damage: str, data: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000006", "step-00000008"]
    DAMAGE[damage](run / "checkpoints" / "step-00000008")

    proc = torchrun(TRAIN, ["--data", str(data), "--run-dir", str(run), *ARGS])
    log = proc.stdout + proc.stderr
    assert "warning: skipped damaged checkpoint step-00000008" in log, log[-3000:]
    if damage == "deleted_checksums":
        assert f"{CHECKSUMS} missing" in log, log[-3000:]
    assert "resuming from" in log and "step-00000006" in log.split("resuming from", 1)[1].splitlines()[0]
    assert not (run / "PWNED").exists(), "code from the checkpoint ran"
    skipped = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e["event"] == "checkpoint_skipped" for e in skipped)
    _assert_identical(_final_state(uninterrupted, tmp_path), _final_state(run, tmp_path))


def test_every_checkpoint_damaged_stops_with_one_line(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    for ckpt in (run / "checkpoints").iterdir():
        _flip_a_byte(ckpt)
    with pytest.raises(AssertionError) as failed:
        torchrun(TRAIN, ["--data", str(data), "--run-dir", str(run), *ARGS])
    assert "error: no intact checkpoint in" in str(failed.value) and "--no-resume" in str(failed.value)


_SAVE_BEST_TWICE = """
import sys
from pathlib import Path
import torch
from mlet_dist.distributed.env import init_distributed, shutdown_distributed
from mlet_dist.training.best_model import BestModelKeeper
keeper = BestModelKeeper(Path(sys.argv[1]), init_distributed("gloo"))
for auc in (0.6, 0.7):  # the same step saved again, as after a restart, over its old checksums.json
    keeper.offer(torch.nn.Linear(3, 2), epoch=0, step=4, metrics={"val": {"auc": auc}}, is_last=False)
shutdown_distributed()
"""


def test_best_model_snapshot_carries_checksums_that_verify(tmp_path: Path) -> None:
    """mlet-collapse verifies a best_model/step-N snapshot as resume verifies a checkpoint, so the
    keeper writes its checksums.json; a byte flipped afterwards is caught."""
    subprocess.run(
        [sys.executable, "-c", _SAVE_BEST_TWICE, str(tmp_path / "best")],
        check=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
    )
    snapshot = tmp_path / "best" / "step-4"
    assert verify_share(snapshot, 0, 1) is None
    assert set(json.loads((snapshot / CHECKSUMS).read_text())) == {".metadata", "__0_0.distcp"}
    shard = snapshot / "__0_0.distcp"
    shard.write_bytes(bytes(b ^ 0xFF for b in shard.read_bytes()[:1]) + shard.read_bytes()[1:])
    assert verify_share(snapshot, 0, 1) == "__0_0.distcp: sha256 differs from checksums.json (corrupted or replaced)"


_RESTORE_BEST = """
import json, sys
from pathlib import Path
import torch
from mlet_dist.distributed.env import init_distributed, shutdown_distributed
from mlet_dist.training.best_model import BestModelKeeper, best_model_path
keeper = BestModelKeeper(Path(sys.argv[1]), init_distributed("gloo"))
model = torch.nn.Linear(3, 2)
with torch.no_grad():
    model.weight.fill_(1.0)
keeper.offer(model, epoch=0, step=4, metrics={"val": {"auc": 0.7}}, is_last=False)  # the best: snapshot
with torch.no_grad():
    model.weight.fill_(2.0)
keeper.offer(model, epoch=0, step=8, metrics={"val": {"auc": 0.6}}, is_last=True)  # the live, last point
if sys.argv[2] == "flip":
    shard = best_model_path(Path(sys.argv[1]), 4) / "__0_0.distcp"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-5] + bytes([raw[-5] ^ 0xFF]) + raw[-4:])
restored = keeper.restore_best(model)
print(json.dumps({"restored": restored, "weight": float(model.weight[0, 0]), "best_step": keeper.best_step}))
shutdown_distributed()
"""


@pytest.mark.parametrize("damage", ["none", "flip"])
def test_a_damaged_best_snapshot_is_not_restored(tmp_path: Path, damage: str) -> None:
    """A flipped byte in best_model/step-N would become the selected, collapsed and exported
    model; the keeper verifies the snapshot's checksums and keeps the live (last) point instead."""
    proc = subprocess.run(
        [sys.executable, "-c", _RESTORE_BEST, str(tmp_path / "best"), damage],
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if damage == "none":
        assert got == {"restored": True, "weight": 1.0, "best_step": 4}
        assert "warning" not in proc.stderr
    else:
        assert got == {"restored": False, "weight": 2.0, "best_step": 8}
        assert "warning: the best point's snapshot" in proc.stderr and "is damaged" in proc.stderr
        assert "the selected model is the last point (step 8) instead" in proc.stderr


# -- the safe reader on its own (one process, no process group) ------------------------------


def _saved(tmp_path: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    path = tmp_path / "ckpt"
    dcp.save(
        {"w": torch.arange(4.0), "group": {"lr": 0.1, "betas": (0.9, 0.99), "name": "adam"}}, checkpoint_id=str(path)
    )
    return path


def test_safe_load_reads_tensors_and_plain_values(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    state = {"w": torch.zeros(4), "group": {"lr": 0.0, "betas": (0.0, 0.0), "name": ""}}
    safe_load(state, path)
    assert torch.equal(state["w"], torch.arange(4.0))
    assert state["group"] == {"lr": 0.1, "betas": (0.9, 0.99), "name": "adam"}


def test_safe_load_refuses_a_malicious_metadata_pickle(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    marker = tmp_path / "PWNED"
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match="pathlib.Path.write_text"):
        safe_load({"w": torch.zeros(4)}, path)
    assert not marker.exists()
    with pytest.raises(BaseException):  # DCP's default reader runs the payload (then fails)
        __import__("torch.distributed.checkpoint").distributed.checkpoint.load(
            {"w": torch.zeros(4)}, checkpoint_id=str(path)
        )
    assert marker.read_text() == PAYLOAD_MARK


def test_safe_planner_refuses_a_malicious_byte_entry(tmp_path: Path) -> None:
    """A byte entry (where optimizer param groups live) holding an object is refused, never
    unpickled; DCP's own reader would run it (shown at the end, so the threat is real)."""
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "PWNED"
    path = tmp_path / "ckpt"
    dcp.save({"w": torch.ones(2), "extra": _Payload(marker)}, checkpoint_id=str(path))
    assert not marker.exists()
    with pytest.raises(BaseException) as refused:
        dcp.load(
            {"w": torch.zeros(2), "extra": None},
            storage_reader=SafeFileSystemReader(path, keep_bytes=True),
            planner=SafeLoadPlanner(),
        )
    assert "refusing to load it" in repr(refused.value)
    assert not marker.exists()
    dcp.load({"w": torch.zeros(2), "extra": None}, checkpoint_id=str(path))  # the default reader
    assert marker.read_text() == PAYLOAD_MARK
