"""Without --run-dir, every rank of a job writes into one run directory (issue 21, bug 1).

The default name used to be a per-process timestamp: ranks started in different seconds wrote
into different folders (a checkpoint missing rank 1's shards, or a hang in the serving export).
Here the two ranks are separate processes started 2.5 s apart, as on two nodes.
"""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.criteo import prepare_criteo_kaggle
from mlet_dist.training.run_name import default_run_name
from training_runs import SAMPLE, TRAIN, free_port, one_process_env, quick_args

QUICK = quick_args(bottom_mlp="16,16", top_mlp="16,1", max_train_batches=4, max_eval_batches=2)
QUICK += ["--sharding", "table_wise"]


def test_default_name_is_the_elastic_run_id_else_a_timestamp() -> None:
    assert default_run_name({"TORCHELASTIC_RUN_ID": "mlet-train-x7k2"}) == "mlet-train-x7k2"
    assert default_run_name({"TORCHELASTIC_RUN_ID": "a/b c"}) == "a_b_c"  # stays one path component
    for env in ({}, {"TORCHELASTIC_RUN_ID": "none"}):  # torchrun's placeholder without --rdzv-id
        assert re.fullmatch(r"\d{8}-\d{6}", default_run_name(env, now=0.0))


def test_ranks_started_seconds_apart_share_one_default_run_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    prepare_criteo_kaggle(SAMPLE, data)
    work = tmp_path / "work"  # the job's working dir: the default run dir lands in work/runs/
    work.mkdir()
    base = one_process_env(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    procs = []
    for rank in (0, 1):
        if rank:
            time.sleep(2.5)  # another second on the clock: a per-rank timestamp would differ
        env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
        procs.append(
            subprocess.Popen(
                [sys.executable, str(TRAIN), "--data", str(data), *QUICK],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=180)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(
            "ranks hung (a rank waiting in a collective for a peer writing elsewhere?): "
            + str(sorted(str(d.relative_to(work)) for d in (work / "runs").glob("*")))
        )
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    run_dirs = sorted((work / "runs").iterdir())
    assert len(run_dirs) == 1, f"ranks wrote into {[d.name for d in run_dirs]}"
    run_dir = run_dirs[0]
    assert re.fullmatch(r"\d{8}-\d{6}", run_dir.name)
    assert (run_dir / "summary.json").is_file()
    for written_by_every_rank in ("checkpoints", "serving"):
        shards = {f.name.split("_")[2] for f in (run_dir / written_by_every_rank).rglob("__*_*.distcp")}
        assert shards == {"0", "1"}, f"{written_by_every_rank}: shards of ranks {shards}"
    assert f"run dir: runs/{run_dir.name}" in outputs[0]
