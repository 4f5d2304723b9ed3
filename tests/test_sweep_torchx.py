"""mlet-sweep through torchx (launch.scheduler): the scheduler requests of a dry run (Slurm sbatch
script, Volcano job), and real local_cwd sweeps on the shipped Criteo sample: the runs finish and
the report is written, a done run is not submitted again, a running app is waited for instead of
submitted twice, and a failed run is reported (and resubmitted next time) while the others finish."""

import json
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from mlet_dist.sweep.cli import main as sweep_main
from mlet_dist.sweep.config import from_dict
from mlet_dist.sweep.report import write_report
from mlet_dist.sweep.torchx_app import build_app, in_repo_root, scheduler_cfg
from mlet_dist.sweep.torchx_runner import APP_FILE, run_sweep_torchx, save_app, saved_app
from training_runs import prepared_sample_by_cli

TINY = ["--batch-size", "128", "--max-train-batches", "2", "--epochs", "1", "--bottom-mlp", "8", "--top-mlp", "8,1"]
GRID = {"archs": ["dlrm"], "seeds": [0], "baseline": {"d": [4]}, "mlet": {"k": [8], "d": [4]}}
RUN_IDS = ("dlrm-baseline-d4-s0", "dlrm-mlet-k8-d4-s0")
MLET_FLAGS = "--arch dlrm --model mlet --embedding-dim 4 --seed 0 --inner-dim 8"


def _config(tmp_path: Path, launch: Dict[str, Any], **extra: Any) -> Path:
    raw = {
        "name": "tx",
        "data": str(tmp_path / "data"),
        "runs_dir": str(tmp_path / "runs"),
        "report_dir": str(tmp_path / "report"),
        "grid": GRID,
        "launch": launch,
        "train_args": TINY,
        "model_args": {"mlet": ["--embedding-lr", "0.2"]},
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _requests(out: str, scheduler: str) -> Dict[str, str]:
    """run id -> the request printed by --dry-run for it."""
    parts = re.split(rf"^--- (\S+): {scheduler} request ---$", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


CLUSTER = {
    "world_size": 8,
    "nodes": 2,
    "threads_per_rank": 4,
    "component": {"gpu": 4, "cpu": 32, "memMB": 200000, "max_restarts": 2},
}


def test_slurm_dry_run_prints_each_runs_sbatch_script(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    launch = {**CLUSTER, "scheduler": "slurm", "scheduler_cfg": {"partition": "gpu", "time": "4:00:00"}}
    assert sweep_main(["--config", str(_config(tmp_path, launch)), "--dry-run"]) == 0
    scripts = _requests(capsys.readouterr().out, "slurm")
    assert sorted(scripts) == sorted(RUN_IDS)
    for run_id, script in scripts.items():
        headers = [line for line in script.splitlines() if line.startswith("#SBATCH --job-name=")]
        assert len(headers) == 2  # one heterogeneous group per node
        for h in headers:
            for opt in ("--gpus-per-task=4", "--cpus-per-task=32", "--mem=200000", "--partition=gpu", "--time=4:00:00"):
                assert opt in h.split(), (opt, h)
        assert script.count("--nnodes 2 --nproc_per_node 4") == 2 and script.count("torchrun --max-restarts 2") == 2
        assert script.count(f"--run-dir {tmp_path / 'runs' / run_id} ") == 2
        assert "OMP_NUM_THREADS=4" in script and "MLET_TENSORBOARD=0" in script
    assert MLET_FLAGS + " --batch-size 128 --max-train-batches 2" in scripts["dlrm-mlet-k8-d4-s0"]
    assert "--embedding-lr 0.2" in scripts["dlrm-mlet-k8-d4-s0"]
    assert "--model baseline --embedding-dim 4 --seed 0 " in scripts["dlrm-baseline-d4-s0"]
    assert "--embedding-lr" not in scripts["dlrm-baseline-d4-s0"]
    assert not (tmp_path / "runs").exists()  # a dry run submits and writes nothing


def test_kubernetes_dry_run_prints_each_runs_volcano_job(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    launch = {
        **CLUSTER,
        "scheduler": "kubernetes",
        "scheduler_cfg": {"queue": "research"},
        "component": {
            **CLUSTER["component"],
            "image": "registry.example/mlet:1",
            "data_volume": "pvc:criteo",
            "runs_volume": "pvc:runs",
        },
        "job_data": "/data/criteo",
        "job_runs_dir": "/runs/tx",
    }
    assert sweep_main(["--config", str(_config(tmp_path, launch)), "--dry-run"]) == 0
    jobs = {k: yaml.safe_load(v) for k, v in _requests(capsys.readouterr().out, "kubernetes").items()}
    assert sorted(jobs) == sorted(RUN_IDS)
    for run_id, job in jobs.items():
        assert job["kind"] == "Job" and job["spec"]["queue"] == "research"
        tasks = job["spec"]["tasks"]
        assert [t["name"] for t in tasks] == ["trainer-0", "trainer-1"] and {t["replicas"] for t in tasks} == {1}
        for task in tasks:
            (container,) = task["template"]["spec"]["containers"]
            assert container["image"] == "registry.example/mlet:1"
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
            command = " ".join(container["command"]).replace("\n", " ")
            command = re.sub(r"\s+", " ", command)
            assert "--nnodes 2 --nproc_per_node 4" in command
            assert f"--data /data/criteo --run-dir /runs/tx/{run_id} " in command
            assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/data", "/runs/tx"}
        if run_id == "dlrm-mlet-k8-d4-s0":
            assert MLET_FLAGS in command
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "launch, message",
    [
        ({"scheduler": "slurm", "component": {"gpus": 4}}, "launch.component has unknown options ['gpus']"),
        ({"scheduler": "slurm", "component": {"j": "2x8"}}, "launch.component may not set ['j']"),
        ({"scheduler": "slurmm"}, "launch.scheduler 'slurmm' is not a torchx scheduler"),
        ({"scheduler": "slurm", "world_size": 6, "nodes": 4}, "not a multiple of launch.nodes"),
        ({"nodes": 2}, "launch.nodes needs a torchx scheduler"),
    ],
)
def test_bad_launch_settings_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, launch: Dict[str, Any], message: str
) -> None:
    assert sweep_main(["--config", str(_config(tmp_path, launch)), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.fixture(scope="module")
def criteo_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_sample_by_cli(tmp_path_factory, "sample")


LOCAL = {"scheduler": "local_cwd", "world_size": 1, "threads_per_rank": 1, "cpu_budget": 2, "poll_s": 0.5}


def test_local_cwd_sweep_finishes_writes_the_report_and_skips_done_runs(
    criteo_sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _config(tmp_path, LOCAL, data=str(criteo_sample))
    assert sweep_main(["--config", str(path)]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    handles = {}
    for run_id in RUN_IDS:
        run_dir = tmp_path / "runs" / run_id
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["world_size"] == 1
        handles[run_id] = saved_app(run_dir)["handle"]
        assert handles[run_id].startswith("local_cwd://") and f"submit {run_id}: {handles[run_id]}" in out
        assert not (run_dir / "checkpoints").exists()  # pruned, as with torchrun
    assert handles[RUN_IDS[0]] != handles[RUN_IDS[1]]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| dlrm | baseline | 4 | – |" in md and "| dlrm | mlet | 4 | 8 |" in md and "runs: 2 of 2 finished" in md
    manifest = json.loads((tmp_path / "runs" / "sweep.json").read_text())
    assert {r["status"] for r in manifest["runs"]} == {"ok"}
    assert {r["app_handle"] for r in manifest["runs"]} == set(handles.values())

    # done runs (summary.json) are not submitted again, and keep their saved handle
    assert sweep_main(["--config", str(path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "2 already done, 0 to run" in out and "submit" not in out
    assert {r: saved_app(tmp_path / "runs" / r)["handle"] for r in RUN_IDS} == handles


class CountingRunner:
    """torchx's runner, counting submissions."""

    def __init__(self, runner: Any) -> None:
        self.runner, self.scheduled = runner, []  # type: ignore[var-annotated]

    def schedule(self, info: Any) -> str:
        handle = self.runner.schedule(info)
        self.scheduled.append(handle)
        return handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)


def test_a_running_app_is_waited_for_not_submitted_twice(criteo_sample: Path, tmp_path: Path) -> None:
    from torchx.runner import get_runner

    cfg = from_dict(
        {
            **yaml.safe_load(_config(tmp_path, LOCAL, data=str(criteo_sample)).read_text()),
            "grid": {**GRID, "mlet": {"k": [], "d": []}},
        }
    )
    (run,) = cfg.runs()
    with get_runner() as torchx_runner:
        # an earlier mlet-sweep submitted the run and saved its handle; the app is still running
        with in_repo_root():
            handle = torchx_runner.schedule(
                torchx_runner.dryrun(build_app(cfg, run), "local_cwd", cfg=scheduler_cfg(cfg))
            )
        save_app(cfg.run_dir(run), handle, "local_cwd", None)
        assert torchx_runner.status(handle).state.name in ("RUNNING", "PENDING", "SUBMITTED")
        runner = CountingRunner(torchx_runner)
        lines: List[str] = []
        (status,) = run_sweep_torchx(cfg, log=lines.append, runner=runner)
    assert runner.scheduled == [], "\n".join(lines)
    assert any(f"waiting {run.run_id}: its app {handle}" in line for line in lines), lines
    assert status.status == "ok" and status.app_handle == handle
    assert json.loads((cfg.run_dir(run) / "summary.json").read_text())["steps"] == 2


def test_a_failed_run_is_reported_the_others_finish_and_it_is_resubmitted(criteo_sample: Path, tmp_path: Path) -> None:
    from torchx.runner import get_runner

    path = _config(tmp_path, LOCAL, data=str(criteo_sample), model_args={"mlet": ["--batch-size", "0"]})
    cfg = from_dict(yaml.safe_load(path.read_text()))
    base, mlet = (cfg.run_dir(r) for r in cfg.runs())
    with get_runner() as torchx_runner:
        runner = CountingRunner(torchx_runner)
        lines: List[str] = []
        statuses = run_sweep_torchx(cfg, log=lines.append, runner=runner)
        assert {s.run.run_id: s.status for s in statuses} == {RUN_IDS[0]: "ok", RUN_IDS[1]: "failed"}, lines
        assert (base / "summary.json").is_file() and not (mlet / "summary.json").exists()
        log = (mlet / "launch.log").read_text()
        assert "FAILED" in log and "--batch-size (per rank) must be >= 1" in log  # the app's output is kept
        write_report(cfg, statuses)
        assert f"missing/failed: {RUN_IDS[1]}" in (tmp_path / "report" / "report.md").read_text()

        failed_handle = saved_app(mlet)["handle"]
        assert torchx_runner.status(failed_handle).state.name == "FAILED"
        lines.clear()
        statuses = run_sweep_torchx(cfg, log=lines.append, runner=runner)
    assert f"[sweep] resubmit {RUN_IDS[1]}: its app {failed_handle} is FAILED" in lines, lines
    assert len(runner.scheduled) == 3 and saved_app(mlet)["handle"] == runner.scheduled[-1] != failed_handle
    assert [s.status for s in statuses] == ["done", "failed"]
    assert (mlet / APP_FILE).is_file()
