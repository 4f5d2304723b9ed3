"""launch/components.py:train through torchx's dry run (slurm sbatch script, Volcano job), its
argument errors, the per-node preflight, and launch/preflight.py. No scheduler needed."""

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from torchx.runner import get_runner
from torchx.specs import macros

from launch import preflight
from launch.components import LaunchError, train

REPO = Path(__file__).resolve().parent.parent

COMPONENT = f"{REPO}/launch/components.py:train"
CLUSTER_ARGS = [
    "-j",
    "2x8",
    "--gpu",
    "8",
    "--cpu",
    "64",
    "--memMB",
    "480000",
    "--max_restarts",
    "3",
    "--max_retries",
    "2",
]


@pytest.fixture(scope="module")
def runner():
    r = get_runner()
    yield r
    r.close()


def test_slurm_dryrun_sbatch_script(runner):
    info = runner.dryrun_component(
        COMPONENT,
        CLUSTER_ARGS
        + ["--venv", "/shared/mlet/.venv", "--", "--data", "/shared/criteo", "--run-dir", "/shared/runs/r1"],
        "slurm",
        cfg={"partition": "gpu", "time": "2:00:00"},
    )
    script = info.request.materialize()
    # one heterogeneous group per node, each with the node's resources
    headers = [line for line in script.splitlines() if line.startswith("#SBATCH --job-name=")]
    assert [h.split()[1] for h in headers] == ["--job-name=trainer-0", "--job-name=trainer-1"]
    for h in headers:
        for opt in (
            "--gpus-per-task=8",
            "--cpus-per-task=64",
            "--mem=480000",
            "--ntasks-per-node=1",
            "--partition=gpu",
            "--time=2:00:00",
        ):
            assert opt in h.split()
    assert "export TORCHX_MAX_RETRIES=2" in script and "scontrol requeue" in script
    # every node: venv, checks, then torchrun with 2 nodes x 8 procs, c10d rendezvous on node 0
    assert script.count(". /shared/mlet/.venv/bin/activate") == 2
    assert script.count("/shared/criteo/meta.json") == 2
    assert (
        script.count(
            "exec torchrun --max-restarts 3 --rdzv_backend c10d "
            "--rdzv_endpoint ${SLURM_JOB_NODELIST_HET_GROUP_0:=localhost}:29500"
        )
        == 2
    )
    assert script.count("--nnodes 2 --nproc_per_node 8") == 2
    assert "mlet_dist/train.py --data /shared/criteo --run-dir /shared/runs/r1" in script
    assert "OMP_NUM_THREADS=8" in script and "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in script


def test_kubernetes_dryrun_volcano_job(runner):
    from kubernetes.client import ApiClient

    info = runner.dryrun_component(
        COMPONENT,
        CLUSTER_ARGS
        + [
            "--image",
            "registry.example/mlet-dist:1",
            "--data_volume",
            "pvc:criteo",
            "--runs_volume",
            "pvc:runs",
            "--ifname",
            "eth0",
            "--",
            "--data",
            "/data/criteo",
            "--run-dir",
            "/runs/r1",
        ],
        "kubernetes",
        cfg={"queue": "research", "namespace": "ml"},
    )
    job = ApiClient().sanitize_for_serialization(info.request.resource)
    assert job["apiVersion"].startswith("batch.volcano.sh/") and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["queue"] == "research" and spec["schedulerName"] == "volcano"
    assert spec["maxRetry"] == 2
    assert [t["name"] for t in spec["tasks"]] == ["trainer-0", "trainer-1"]
    for i, task in enumerate(spec["tasks"]):
        assert task["replicas"] == 1 and task["maxRetry"] == 2
        pod = task["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "registry.example/mlet-dist:1"
        limits = container["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "8" and limits["cpu"] == "64000m" and limits["memory"] == "480000M"
        command = " ".join(container["command"])
        assert "exec torchrun --max-restarts 3 --rdzv_backend c10d" in command
        assert "--nnodes 2 --nproc_per_node 8" in command
        rank0 = "TORCHX_RANK0_HOST" if i == 0 else "VC_TRAINER_0_HOSTS"
        assert f"--rdzv_endpoint ${{{rank0}:=localhost}}:29500" in command
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["OMP_NUM_THREADS"] == "8"
        assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "eth0"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/data"].get("readOnly") is True and not mounts["/runs"].get("readOnly")
        assert "/dev/shm" in mounts
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        claims = sorted(
            v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v
        )
        assert claims == ["criteo", "runs"]


def test_builtin_dist_ddp_still_works(runner):
    info = runner.dryrun_component(
        "dist.ddp",
        ["-j", "2x8", "--script", "mlet_dist/train.py", "--", "--data", "/shared/criteo"],
        "slurm",
        cfg={},
    )
    script = info.request.materialize()
    assert script.count("#SBATCH --job-name=train-") == 2
    assert "--nnodes 2 --nproc_per_node 8" in script and "mlet_dist/train.py --data /shared/criteo" in script


def test_cli_local_cwd_dryrun_uses_repo_torchxconfig():
    """The CLI from the repo root: .torchxconfig names the component and the local log dir."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchx.cli.main",
            "run",
            "--dryrun",
            "--",
            "-j",
            "1x2",
            "--",
            "--data",
            "/tmp/some-data",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "runs/torchx" in text and "--nproc_per_node 2" in text and "localhost:0" in text


@pytest.mark.parametrize(
    "script_args, args, message",
    [
        ([], dict(), "no dataset"),
        (["--data", "/d"], dict(j="2x8", gpu=4), "one process per GPU, use -j 2x4"),
        (["--data", "/d"], dict(j="2by8"), "expected NODESxPROCS"),
        (["--data", "data/criteo"], dict(data_volume="pvc:criteo"), "needs an absolute --data"),
        (["--data", "/d", "--run-dir", "runs/x"], dict(runs_volume="pvc:runs"), "needs an absolute --run-dir"),
        (["--data", "/d/c"], dict(data_volume="nfs-share"), "expected pvc:CLAIM_NAME or an absolute host path"),
    ],
)
def test_component_argument_errors(script_args, args, message):
    with pytest.raises(LaunchError, match=message):
        train(*script_args, **args)


def test_plan_world_mismatch(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"world_size": 8, "tables": {}}))
    with pytest.raises(LaunchError, match=r"plan/world mismatch.*world size 8.*2 x 8 = 16.*-j 1x8"):
        train("--data", "/d", j="2x8", plan=str(plan))
    with pytest.raises(LaunchError, match="elastic"):
        train("--data", "/d", j="1:2x4", plan=str(plan))
    app = train("--data", "/d", j="2x4", plan=str(plan))  # matches: passed on to train.py
    assert f"mlet_dist/train.py --data /d --plan {plan}" in app.roles[0].args[-1]
    assert f"[ ! -f {plan} ]" in app.roles[0].args[-1]


def _node_command(app) -> str:
    role = macros.Values(img_root="", app_id="test-app", replica_id="0", rank0_env="RANK0").apply(app.roles[0])
    assert role.args[0] == "-c"
    return role.args[1]


def _run_node(command: str, cwd: Path, path: str):
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": path, "HOME": str(cwd), "HOSTNAME": "node-7"},
    )


def test_node_preflight_torchrun_missing(tmp_path):
    out = _run_node(_node_command(train("--data", str(tmp_path))), tmp_path, "/usr/bin:/bin")
    assert out.returncode == 127
    assert "mlet launch error on node node-7" in out.stderr and "torchrun is not on PATH" in out.stderr


def _fake_venv(root: Path) -> Path:
    """A venv whose activate puts a torchrun on PATH that prints its argv."""
    bin_dir = root / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    torchrun = bin_dir / "torchrun"
    torchrun.write_text('#!/bin/bash\necho "FAKE-TORCHRUN $*"\n')
    torchrun.chmod(torchrun.stat().st_mode | stat.S_IEXEC)
    return root / "venv"


def test_node_preflight_data_missing_then_ok(tmp_path):
    venv = _fake_venv(tmp_path)
    data = tmp_path / "data"
    command = _node_command(train("--data", str(data), "--run-dir", "r", venv=str(venv), max_restarts=2))
    out = _run_node(command, tmp_path, "/usr/bin:/bin")
    assert out.returncode == 2
    assert "on node node-7" in out.stderr and f"no prepared dataset at {data}" in out.stderr

    data.mkdir()
    (data / "meta.json").write_text("{}")
    out = _run_node(command, tmp_path, "/usr/bin:/bin")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("FAKE-TORCHRUN --max-restarts 2 --rdzv_backend c10d")
    assert f"mlet_dist/train.py --data {data} --run-dir r" in out.stdout


def test_preflight_cli_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"world_size": 4}))

    assert (
        preflight.main(
            ["-s", "slurm", "-j", "2x8", "--data", str(tmp_path / "nope"), "--venv", str(tmp_path / "no-venv")]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "error slurm: sbatch, squeue, sacct, scancel not on PATH" in out
    assert "error torchrun is not on PATH" in out
    assert f"no prepared dataset at {tmp_path / 'nope'}" in out

    assert preflight.main(["-s", "kubernetes", "-j", "2x8", "--plan", str(plan)]) == 1
    out = capsys.readouterr().out
    assert "error kubernetes: no usable kubeconfig" in out
    assert "plan/world mismatch" in out

    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text("{}")
    venv = _fake_venv(tmp_path)
    assert (
        preflight.main(["-s", "local_cwd", "-j", "1x4", "--data", str(data), "--plan", str(plan), "--venv", str(venv)])
        == 0
    )
    assert "preflight: ok" in capsys.readouterr().out


def test_torchxconfig_parses():
    from torchx.runner.config import apply, get_config

    dirs = [str(REPO)]
    assert get_config(prefix="cli", name="run", key="component", dirs=dirs) == "launch/components.py:train"
    assert get_config(prefix="cli", name="run", key="scheduler", dirs=dirs) == "local_cwd"
    local_cfg, kube_cfg = {}, {}
    apply(scheduler="local_cwd", cfg=local_cfg, dirs=dirs)
    apply(scheduler="kubernetes", cfg=kube_cfg, dirs=dirs)
    assert local_cfg["log_dir"] == "runs/torchx" and kube_cfg["queue"] == "default"


# The 2x8 GPU job as launch/README.md writes it (issue 21): the promised `torchx run dist.ddp -j 2x8
# mlet_dist/train.py` fails in torchx (dist.ddp needs --script) and asks for 2 CPUs, 1 GB, no GPU.
PROMISED_2X8 = (
    "torchx run -s slurm launch/components.py:train -j 2x8 --gpu 8 --cpu 64 --memMB 480000 "
    "mlet_dist/train.py --data /shared/data/criteo --run-dir /shared/runs/criteo-2x8"
)
BUILTIN_2X8 = (
    "torchx run -s slurm dist.ddp -j 2x8 --gpu 8 --cpu 64 --memMB 480000 "
    "--script mlet_dist/train.py -- --data /shared/data/criteo --run-dir /shared/runs/criteo-2x8"
)


@pytest.mark.parametrize("command", [PROMISED_2X8, BUILTIN_2X8], ids=["component", "dist.ddp"])
def test_documented_2x8_gpu_command_dryruns_with_gpus_and_memory(command):
    readme = (REPO / "launch" / "README.md").read_text()
    assert command in " ".join(readme.replace("\\\n", " ").split()), "launch/README.md shows this command"
    argv = command.split()[2:]  # after "torchx run"
    out = subprocess.run(
        [sys.executable, "-m", "torchx.cli.main", "run", "--dryrun", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    script = out.stdout.split("=== SCHEDULER REQUEST ===")[-1]  # the sbatch script
    headers = [line.split() for line in script.splitlines() if line.startswith("#SBATCH --job-name=")]
    assert len(headers) == 2  # one group per node
    for h in headers:
        assert {"--gpus-per-task=8", "--cpus-per-task=64", "--mem=480000", "--ntasks-per-node=1"} <= set(h)
    assert script.count("--nnodes 2 --nproc_per_node 8") == 2
    assert script.count(" mlet_dist/train.py --data /shared/data/criteo --run-dir /shared/runs/criteo-2x8") == 2
    assert script.count("mlet_dist/train.py") == 2  # the entry point once per node, not also as its argument


def test_script_path_first_is_the_entry_point_not_an_argument():
    app = train("mlet_dist/train.py", "--data", "/d", j="1x2")
    assert app.roles[0].args[-1].endswith("mlet_dist/train.py --data /d")
    assert "train.py mlet_dist/train.py" not in app.roles[0].args[-1]
    with pytest.raises(LaunchError, match="two entry points"):
        train("other.py", "--data", "/d", j="1x2", script="mlet_dist/train.py2")


def test_preflight_refuses_a_venv_that_does_not_exist(tmp_path, monkeypatch, capsys):
    """issue 21: `--venv /no/such` said `ok torchrun` when some torchrun was on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text("#!/bin/sh\n")
    (bin_dir / "torchrun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text("{}")
    rc = preflight.main(["-s", "local_cwd", "--data", str(data), "--venv", str(tmp_path / "no-venv")])
    out = capsys.readouterr().out
    assert rc == 1 and f"error venv: {tmp_path / 'no-venv'} does not exist here" in out
