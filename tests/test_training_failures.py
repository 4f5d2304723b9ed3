"""A training job that meets an error ends promptly and says so once (2 gloo ranks, torchrun):
one rank failing alone, impossible flags, bad values in the data, a diverging loss."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dist_launch import ROOT
from training_runs import TRAIN, prepared_sample, quick_args

SMALL = quick_args(bottom_mlp="32,16", top_mlp="32,1", max_train_batches=6, max_eval_batches=2)
SMALL += ["--no-collapse", "--sharding", "table_wise"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_sample(tmp_path_factory, "failures")


def launch(args: List[str], timeout: float, env_extra: dict = {}) -> Tuple[subprocess.CompletedProcess, float]:
    """torchrun with 2 ranks; (process, seconds). A hang fails the test through the timeout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(TRAIN), *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def error_lines(proc: subprocess.CompletedProcess) -> List[str]:
    return [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("error:")]


def test_one_rank_failing_ends_the_job_promptly_with_one_error_line(data: Path, tmp_path: Path) -> None:
    """Rank 1 raises after step 3 while rank 0 goes on into step 4's all-to-all. Before the fix the
    failing rank waited in a teardown barrier and the job hung until the backend timeout."""
    run = tmp_path / "run"
    proc, seconds = launch(
        ["--data", str(data), "--run-dir", str(run), *SMALL], timeout=60, env_extra={"MLET_FAULT": "step:3:1:raise"}
    )
    assert proc.returncode != 0
    assert seconds < 60
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: InjectedFault: injected fault on rank 1 at step 3 (rank 1 of 2)")
    assert f"full traceback in {run / 'errors' / 'rank1.log'}" in lines[0]
    assert "Traceback" in (run / "errors" / "rank1.log").read_text()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--dense-lr", "inf", "--dense-lr must be a finite number > 0, got inf"),
        ("--embedding-lr", "nan", "--embedding-lr must be a finite number > 0, got nan"),
        ("--log-every", "0", "--log-every must be >= 1"),
        ("--max-train-batches", "0", "--max-train-batches must be >= 1 (leave it out for the whole split)"),
        ("--collective-timeout-s", "-1", "--collective-timeout-s must be a positive number"),
    ],
)
def test_impossible_flags_stop_before_training_with_one_line(
    data: Path, tmp_path: Path, flag: str, value: str, message: str
) -> None:
    args = [a for a in SMALL if a not in ("--max-train-batches", "6")] if flag == "--max-train-batches" else SMALL
    proc, _ = launch(["--data", str(data), "--run-dir", str(tmp_path / "run"), *args, flag, value], timeout=120)
    assert error_lines(proc) == [f"error: {message}"] or (
        len(error_lines(proc)) == 1 and error_lines(proc)[0].startswith(f"error: {message}")
    ), proc.stderr[-2000:]
    assert "exitcode  : 2" in proc.stderr  # torchrun's report of the worker's exit code
    assert not (tmp_path / "run" / "checkpoints").exists()


def _rewrite_train_part(data: Path, tmp_path: Path, edit) -> Path:
    """A copy of the dataset with the train part file changed by ``edit(table) -> table``."""
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    part = copy / "train" / "part-00000.parquet"
    pq.write_table(edit(pq.read_table(part)), part)
    return copy


def _set_column(table: pa.Table, name: str, row: int, value: float) -> pa.Table:
    col = table.column(name).to_numpy().copy()
    col[row] = value
    return table.set_column(table.schema.get_field_index(name), name, pa.array(col, type=table.schema.field(name).type))


def test_label_other_than_0_or_1_is_refused_before_training(data: Path, tmp_path: Path) -> None:
    bad = _rewrite_train_part(data, tmp_path, lambda t: _set_column(t, "label", 5000, 7))
    proc, _ = launch(["--data", str(bad), "--run-dir", str(tmp_path / "run"), *SMALL], timeout=120)
    lines = error_lines(proc)
    assert len(lines) == 1 and "labels must be 0 or 1, found values in [0, 7]" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nan_dense_value_stops_at_its_batch_with_valid_metrics(data: Path, tmp_path: Path) -> None:
    """NaN is invisible to parquet statistics; the reader names the file and rows when it meets it
    (row 200 is in the second global batch of 128 rows), before that step trains or saves."""
    bad = _rewrite_train_part(data, tmp_path, lambda t: _set_column(t, "I3", 200, np.nan))
    run = tmp_path / "run"
    proc, _ = launch(
        ["--data", str(bad), "--run-dir", str(run), *SMALL, "--checkpoint-every", "1", "--log-every", "1"], timeout=120
    )
    lines = error_lines(proc)
    assert len(lines) == 1 and "dense feature 'I3' has NaN or infinite values" in lines[0], proc.stderr[-2000:]
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]  # strict JSON
    assert not [e for e in events if e["event"] == "train"], "the reader reads 8192 rows ahead: no step ran"


def test_diverging_loss_stops_with_step_named_and_no_checkpoint_of_it(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc, _ = launch(
        [
            "--data",
            str(data),
            "--run-dir",
            str(run),
            *SMALL,
            "--checkpoint-every",
            "1",
            "--log-every",
            "1",
            "--dense-optimizer",
            "sgd",
            "--dense-lr",
            "1e30",
            "--embedding-optimizer",
            "sgd",
            "--embedding-lr",
            "1e30",
        ],
        timeout=120,
    )
    lines = error_lines(proc)
    assert len(lines) == 1 and "training loss is nan at global step" in lines[0], proc.stderr[-2000:]
    step = int(lines[0].split("global step ")[1].split()[0])
    saved = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert step not in saved and all(s < step for s in saved)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))


def test_bad_val_id_fails_before_the_first_step(data: Path, tmp_path: Path) -> None:
    """Before the footer check, an id past its table in the val split surfaced only at the
    first evaluation, after a whole epoch of training."""
    import shutil

    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    part = bad / "val" / "part-00000.parquet"
    pq.write_table(_set_column(pq.read_table(part), "C5", 10, 10**6), part)
    run = tmp_path / "run"
    proc, _ = launch(["--data", str(bad), "--run-dir", str(run), *SMALL, "--log-every", "1"], timeout=120)
    lines = error_lines(proc)
    assert len(lines) == 1 and re.search(r"feature 'C5' has ids in \[\d+, 1000000\], outside its table", lines[0]), (
        lines
    )
    assert "val/part-00000.parquet" in lines[0]
    events = (
        [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        if (run / "metrics.jsonl").exists()
        else []
    )
    assert not [e for e in events if e["event"] == "train"]


def test_corrupt_part_file_mid_epoch_stops_every_rank_naming_file_and_row_group(data: Path, tmp_path: Path) -> None:
    """The footer is intact (the pre-training check passes) but a data page is not: the rank that
    reads it names the file and row group, and the whole job ends promptly, no hang."""
    import shutil

    bad = Path(shutil.copytree(data, tmp_path / "data"))
    part = bad / "train" / "part-00000.parquet"
    raw = bytearray(part.read_bytes())
    footer = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    raw[100 : footer - 100] = bytes(footer - 200)  # zero the data pages, keep the footer
    part.write_bytes(bytes(raw))
    proc, seconds = launch(["--data", str(bad), "--run-dir", str(tmp_path / "run"), *SMALL], timeout=90)
    assert proc.returncode != 0 and seconds < 90
    lines = error_lines(proc)
    assert len(lines) == 1 and "part-00000.parquet (row group" in lines[0], (lines, proc.stderr[-2000:])
