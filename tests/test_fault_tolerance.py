"""Training survives a lost rank: torchrun --max-restarts 1 restarts the job, which resumes from
the newest complete checkpoint and ends with weights and optimizer state bit-identical to an
uninterrupted run (CPU, gloo, the default rank-local shuffled order, seeded). A rank killed while
a checkpoint is being written leaves a torn ``.tmp`` directory that is never loaded. A run resumed
on another world size follows the uninterrupted run's weights and optimizer state (exact row
order, same global batch). Each rank's RNG stream comes back from a checkpoint (checked directly:
training itself draws nothing random)."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Sequence

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from dist_launch import torchrun
from training_runs import TRAIN, data_and_run_dir, prepared_sample, quick_args, train_one_process

ARGS = [
    *quick_args(bottom_mlp="32,16", top_mlp="32,1", max_train_batches=8, max_eval_batches=2),
    "--checkpoint-every",
    "2",
    "--no-collapse",
    "--sharding",
    "table_wise",
    "--embedding-optimizer",
    "rowwise_adagrad",
    "--dense-optimizer",
    "adam",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_sample(tmp_path_factory, "fault")


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("fault") / "clean"
    torchrun(TRAIN, ["--data", str(data), "--run-dir", str(run), *ARGS])
    return run


def _final_state(run: Path, tmp: Path) -> Dict[str, torch.Tensor]:
    final = run / "checkpoints" / "step-00000008"
    assert (final / "train_state.json").is_file(), sorted(p.name for p in (run / "checkpoints").iterdir())
    return _checkpoint_state(final, tmp)


def _checkpoint_state(checkpoint: Path, tmp: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of a DCP checkpoint (model and optimizer), flattened to dotted keys."""
    out = tmp / f"{checkpoint.parent.parent.name}-{checkpoint.name}.pt"
    dcp_to_torch_save(str(checkpoint), str(out))
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
    proc = torchrun(
        TRAIN,
        ["--data", str(data), "--run-dir", str(run), *ARGS],
        launcher_args=["--max-restarts", "1"],
        env_extra={"MLET_FAULT": fault},
    )
    return proc.stdout + proc.stderr


def test_killed_rank_resumes_bit_identical(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "faulty"
    log = _restart_run(data, run, "step:5:1")
    assert "[fault injection] rank 1 exits at step 5" in log
    assert "resuming from" in log and "step-00000004" in log
    resumed = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["checkpoint"] for e in resumed if e["event"] == "resume"] == ["step-00000004"]
    _assert_identical(_final_state(uninterrupted, tmp_path), _final_state(run, tmp_path))


def test_killed_rank_resumes_bit_identical_on_16_ranks(data: Path, tmp_path: Path) -> None:
    """The 2x8 job's rank count. With 3+ ranks the order in which gloo adds gradients depends on
    DDP's bucket layout, which DDP used to rebuild after each process's first step: the resumed
    job's first step differed from the uninterrupted job's at ~6e-8 (seen at 4 and 16 ranks; 2
    ranks add commutatively). A first fix that kept TorchRec's static graph diverged at 16 ranks
    only (0.68) and passed at 4, hence 16 here."""
    args = [*(a if a != "64" else "16" for a in ARGS)]
    clean, run = tmp_path / "clean16", tmp_path / "faulty16"
    torchrun(TRAIN, ["--data", str(data), "--run-dir", str(clean), *args], nproc=16)
    proc = torchrun(
        TRAIN,
        ["--data", str(data), "--run-dir", str(run), *args],
        nproc=16,
        launcher_args=["--max-restarts", "1"],
        env_extra={"MLET_FAULT": "step:5:3"},
    )
    assert "resuming from" in proc.stdout + proc.stderr
    _assert_identical(_final_state(clean, tmp_path), _final_state(run, tmp_path))


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


EXACT = ["--data-order", "exact", "--no-shuffle", "--keep-checkpoints", "8"]  # N x B rows = 1 x N*B rows
WORLD_SIZE_CHANGE_TOL = 1e-3  # |Δ - Δ_ref| / |Δ_ref| per tensor; fp32 noise between 2 ranks and 1 is far below


def _one_rank(data: Path, run: Path, batch_size: str, extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """train.py as one plain process (no torchrun variables), ARGS with --batch-size replaced."""
    args = [a if a != "64" else batch_size for a in ARGS]
    return train_one_process(data_and_run_dir(data, run, *args, *extra), timeout=600)


def _update_errors(
    state: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor], start: Dict[str, torch.Tensor]
) -> Dict[str, float]:
    """Per tensor, how far the update since ``start`` is from the reference's, relative to the
    reference update's size (Frobenius norms; a tensor the reference left alone must stay)."""
    errors = {}
    for key, r in ref.items():
        ref_update = (r - start[key]).double()
        update = (state[key] - start[key]).double()
        size = ref_update.norm().item()
        gap = (update - ref_update).norm().item()
        errors[key] = gap / size if size > 0 else (0.0 if gap <= 1e-7 else float("inf"))
    return errors


def test_resume_on_another_world_size(data: Path, tmp_path: Path) -> None:
    """A 2-rank job dies after its step-2 checkpoint; the run resumes on 1 rank (DCP reshards the
    tables and optimizer state) with the rows the epoch had left, in any batch size (row by row:
    tests/test_elastic_resume_rows.py). With the same global batch (1 x 128 rows for 2 x 64) and the exact row
    order, the resumed run's weights and optimizer state follow an uninterrupted 2-rank run: the
    update from the step-2 checkpoint to step 8 equals the reference's within 1e-3 of its size
    (a lost optimizer state or a data position one batch off reads as far more)."""
    run = tmp_path / "resharded"
    with pytest.raises(AssertionError):  # no restarts allowed: the job fails at step 3
        torchrun(
            TRAIN, ["--data", str(data), "--run-dir", str(run), *ARGS, *EXACT], env_extra={"MLET_FAULT": "step:3:1"}
        )
    assert (run / "checkpoints" / "step-00000002" / "train_state.json").is_file()
    rows_run = tmp_path / "rows"  # the same dead job, resumed with another global batch below
    shutil.copytree(run, rows_run)
    reference = tmp_path / "reference"
    torchrun(TRAIN, ["--data", str(data), "--run-dir", str(reference), *ARGS, *EXACT])

    resumed = _one_rank(data, run, "128", EXACT)  # 256 rows done = batch 2 of 128-row batches
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "(epoch 0, batch 2, step 2)" in resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 8
    start = _checkpoint_state(reference / "checkpoints" / "step-00000002", tmp_path)
    written = _checkpoint_state(run / "checkpoints" / "step-00000002", tmp_path)
    for key, value in start.items():  # the dead job wrote what the reference wrote
        assert torch.equal(value, written[key]), key
    final, ref_final = _final_state(run, tmp_path), _final_state(reference, tmp_path)
    assert set(final) == set(ref_final) and any(k.startswith("optim.") for k in final)
    errors = _update_errors(final, ref_final, start)
    moved = [k for k in ref_final if k.startswith("model.") and (ref_final[k] - start[k]).abs().max() > 1e-4]
    assert len(moved) >= 10, f"training barely moved the weights ({moved}): the comparison would be vacuous"
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] <= WORLD_SIZE_CHANGE_TOL, f"{worst}: update differs by {errors[worst]:.2e} of its size"

    # Another global batch: the epoch (--max-train-batches 8 of 2 x 64 rows) had 6 x 128 = 768 rows
    # left; 1 x 100 trains 7 batches of them and reports the last 68 (< one batch) as untrained.
    resumed_rows = _one_rank(data, rows_run, "100", EXACT)
    assert resumed_rows.returncode == 0, resumed_rows.stderr[-3000:]
    assert "resuming from" in resumed_rows.stdout and "(epoch 0, batch 2, step 2)" in resumed_rows.stdout
    assert "warning: resuming epoch 0 in another shape: the epoch's 768 rows left" in resumed_rows.stdout
    assert "last 68 rows are not trained" in resumed_rows.stdout
    summary = json.loads((rows_run / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 2 + 7
    events = [json.loads(line) for line in (rows_run / "metrics.jsonl").read_text().splitlines()]
    assert [(e["rows_left"], e["batches"]) for e in events if e.get("event") == "resume_rows"] == [(768, 7)]


RNG_WORKER = """
import sys
from pathlib import Path

import torch
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from mlet_dist.distributed.env import init_distributed, shutdown_distributed
from mlet_dist.training.checkpoint import CheckpointManager, TrainPosition

env = init_distributed("gloo")
out = Path(sys.argv[1])
model = torch.nn.Linear(3, 1)
optimizer = CombinedOptimizer([KeyedOptimizerWrapper(dict(model.named_parameters()),
                                                     lambda params: torch.optim.SGD(params, lr=0.1))])
manager = CheckpointManager(out / "checkpoints", env)
torch.manual_seed(100 + env.rank)  # every rank its own stream: each must get its own back
manager.save(model, optimizer, TrainPosition(step=1, world_size=env.world_size))
after_save = torch.rand(4)
torch.rand(1000)  # the run goes on drawing before it dies
manager.load(manager.latest(), model, optimizer)
torch.save({"after_save": after_save, "after_load": torch.rand(4)}, out / f"rank{env.rank}.pt")
shutdown_distributed()
"""


def test_checkpoint_restores_each_ranks_rng_stream(tmp_path: Path) -> None:
    """Training draws nothing random today (no dropout; the shuffle is seeded by (seed, epoch)),
    so the resume tests cannot see the RNG restore: check it where it happens. Each of 2 ranks
    seeds differently, saves, draws, draws on, loads, and must draw the same numbers again."""
    worker = tmp_path / "rng_worker.py"
    worker.write_text(RNG_WORKER)
    torchrun(worker, [str(tmp_path)])
    draws = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rank, d in enumerate(draws):
        assert torch.equal(d["after_save"], d["after_load"]), f"rank {rank}: RNG state not restored"
    assert not torch.equal(draws[0]["after_save"], draws[1]["after_save"]), "ranks drew the same stream"
