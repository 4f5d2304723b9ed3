"""No checkpoint stage holds a second copy of the tables (issue 26): on CPU every table is a view
of fbgemm's flat per-rank buffer, and DCP's writer used to clone and keep them all until the file
was written (+100% RSS for the whole save), and its reader loaded each table whole before copying it in."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from mlet_dist.distributed.exact_save import exact_storage_alias

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "workers" / "checkpoint_memory_worker.py"


def test_alias_has_exact_storage_and_shares_memory() -> None:
    flat = torch.arange(100.0)
    view = flat[10:30].view(4, 5)
    alias = exact_storage_alias(view)
    assert alias.untyped_storage().nbytes() == view.nbytes == 80
    assert alias.data_ptr() == view.data_ptr() and torch.equal(alias, view)
    alias[0, 0] = -1.0
    assert flat[10] == -1.0  # the same bytes, not a copy
    own = torch.zeros(3)
    assert exact_storage_alias(own) is own
    strided = flat.view(10, 10)[:, :3]
    assert exact_storage_alias(strided) is strided  # not contiguous: DCP's own clone handles it


def test_save_and_load_hold_no_second_copy_of_the_tables() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(WORKER)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    tables, extra = result["table_bytes"], result["extra_bytes"]
    # measured: saves +4..6% of the table bytes (were +100%); load +5% (was +50%: DCP's reader loaded
    # each of the 4 tables whole, then copied it in; safe_dcp reads the bytes in place)
    assert extra["checkpoint_save"] < 0.25 * tables, extra
    assert extra["best_model_save"] < 0.25 * tables, extra
    assert extra["checkpoint_load"] < 0.2 * tables, extra


ASYNC_SAVES = """
import json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
from bench_checkpoint_memory import build
import mlet_dist.training.checkpoint as checkpoint
from mlet_dist.distributed.env import init_distributed, shutdown_distributed
checkpoint.host_memory_available = lambda: int(sys.argv[3])  # what the host has free, as the test says
env = init_distributed("gloo")
model, optimizer = build(env, {"C1": 1000, "C2": 2000})
manager = checkpoint.CheckpointManager(Path(sys.argv[2]), env, keep=3, mode="async")
in_background = []
for step in (1, 2):
    manager.save(model, optimizer, checkpoint.TrainPosition(step=step))
    in_background.append(manager._pending is not None)
    manager.finish_pending()
print(json.dumps({"in_background": in_background, "published": [p.name for p in manager._published()]}))
shutdown_distributed()
"""


def _async_saves(tmp_path: Path, available: int) -> tuple:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", ASYNC_SAVES, str(ROOT), str(tmp_path / f"ck{available}"),
                           str(available)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), [l for l in proc.stderr.splitlines() if "warning:" in l]


def test_async_save_on_cpu_goes_sync_when_its_copy_would_not_fit(tmp_path: Path) -> None:
    """Issue 26 item 3: an async save on CPU stages a whole second copy of the rank's state
    (benchmarks/bench_checkpoint_memory.py: +1.02x of the tables). Where the host's free memory
    per rank cannot hold it, the step is saved synchronously, said once in one warning line."""
    tight, warnings = _async_saves(tmp_path, available=1_000_000)  # 1 MB free: the ~1 MB of tables do not fit
    assert tight == {"in_background": [False, False], "published": ["step-00000001", "step-00000002"]}, tight
    assert len(warnings) == 1 and warnings[0].startswith("warning: --checkpoint-mode async on CPU"), warnings
    assert "saving synchronously instead (from step 1" in warnings[0]
    roomy, warnings = _async_saves(tmp_path, available=10**12)
    assert roomy == {"in_background": [True, True], "published": ["step-00000001", "step-00000002"]}, roomy
    assert warnings == []
