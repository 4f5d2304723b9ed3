"""Checkpoints whose files verify (the attacker rewrote checksums.json) but whose content is not
what this version writes: a string step, a batch past its epoch, a data position of the wrong
shape, a garbage RNG state, a storage file outside the checkpoint. Each used to stop the job
(TypeError, RuntimeError, "world size mismatch") or skip the epoch silently; each is damage now:
skipped with a warning, resumed from the older checkpoint, ending bit-identical to the
undamaged run (2 gloo ranks, the run of test_fault_tolerance)."""

import dataclasses
import json
import pickle
import shutil
from pathlib import Path
from typing import Callable, Dict

import pytest

from dist_launch import torchrun
import test_fault_tolerance
from test_fault_tolerance import ARGS, TRAIN, _assert_identical, _final_state

from mlet_dist.digests import file_entry
from mlet_dist.distributed.safe_dcp import safe_read_metadata
from mlet_dist.training.checkpoint_digest import CHECKSUMS

# The fault-tolerance run's module-scoped fixtures, bound by assignment: pytest finds them by name in
# this module, and an import of them would read to a linter as redefined by each test's parameter.
data, uninterrupted = test_fault_tolerance.data, test_fault_tolerance.uninterrupted


def _rewrite(ckpt: Path, name: str, text: str) -> None:
    """Replace one file and re-digest it, as an attacker (or a buggy tool) with write access would."""
    (ckpt / name).write_text(text) if isinstance(text, str) else (ckpt / name).write_bytes(text)
    sums = json.loads((ckpt / CHECKSUMS).read_text())
    sums[name] = file_entry(ckpt / name)
    (ckpt / CHECKSUMS).write_text(json.dumps(sums))


def _edit_state(ckpt: Path, **fields: object) -> None:
    state = json.loads((ckpt / "train_state.json").read_text())
    state.update(fields)
    _rewrite(ckpt, "train_state.json", json.dumps(state))


def _edit_data(ckpt: Path, **fields: object) -> None:
    state = json.loads((ckpt / "train_state.json").read_text())
    _edit_state(ckpt, data={**state["data"], **fields})


def _storage_escape(ckpt: Path) -> None:
    metadata = safe_read_metadata(ckpt / ".metadata")
    index = next(iter(metadata.storage_data))
    metadata.storage_data[index] = dataclasses.replace(metadata.storage_data[index], relative_path="../../x.distcp")
    _rewrite(ckpt, ".metadata", pickle.dumps(metadata))


TAMPER: Dict[str, Callable[[Path], None]] = {
    "string_step": lambda c: _edit_state(c, step="8"),
    "batch_past_the_epoch": lambda c: _edit_state(c, batch_in_epoch=10**9, epoch=0),
    "plan_outside_the_split": lambda c: _edit_data(c, plan=[[0, 10**12, 0, 5]]),
    "garbage_rng": lambda c: _rewrite(c, "rng-rank0.json", json.dumps([7] * 10)),
    "storage_path_escape": _storage_escape,
}


@pytest.mark.parametrize("tamper", sorted(TAMPER))
def test_tampered_fields_are_damage(tamper: str, data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    TAMPER[tamper](run / "checkpoints" / "step-00000008")
    proc = torchrun(TRAIN, ["--data", str(data), "--run-dir", str(run), *ARGS])
    log = proc.stdout + proc.stderr
    assert "warning: skipped damaged checkpoint step-00000008" in log, log[-3000:]
    assert "Traceback" not in log
    assert "resuming from" in log and "step-00000006" in log.split("resuming from", 1)[1].splitlines()[0]
    _assert_identical(_final_state(uninterrupted, tmp_path), _final_state(run, tmp_path))
