"""torchx components for mlet_dist training (see launch/README.md for the runbooks).

    torchx run -s local_cwd launch/components.py:train -j 1x2 -- --data DIR --run-dir DIR
    torchx run -s slurm -cfg partition=gpu,time=2:00:00 launch/components.py:train \
        -j 2x8 --gpu 8 --cpu 64 --memMB 480000 --max_restarts 3 -- --data /shared/criteo --run-dir /shared/runs/x
    torchx run -s kubernetes -cfg queue=default,namespace=ml launch/components.py:train \
        -j 2x8 --gpu 8 --image REGISTRY/mlet-dist:TAG --data_volume pvc:criteo --runs_volume pvc:runs \
        -- --data /data/criteo --run-dir /runs/x

`train` is torchx's own `dist.ddp` (torchrun with c10d rendezvous on the first node) with:
  * the entry point mlet_dist/train.py and a per-node preflight (venv, torchrun, data, plan) that
    fails with a clear message naming the node,
  * thread counts (OMP/MKL = CPUs per node / processes per node) and gloo/NCCL settings,
  * resources per node (GPUs, CPUs, memory; /dev/shm is a memory-backed volume on Kubernetes),
  * mounts for the data and run directories,
  * torchrun --max-restarts (in-place restarts of all workers) besides the scheduler's max_retries.
`torchx run dist.ddp -j 2x8 --script mlet_dist/train.py -- --data DIR` keeps working unchanged (dist.ddp
needs --script, and asks for its own default resources: 2 CPUs, 1 GB, no GPU per node). With this
component the script may come first, as users type it for dist.ddp:

    torchx run -s slurm launch/components.py:train -j 2x8 --gpu 8 --cpu 64 --memMB 480000 \
        mlet_dist/train.py --data /shared/criteo --run-dir /shared/runs/x

This file is loaded by torchx from its path, so it imports nothing from the repo.
"""

import json
import os
import shlex
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torchx.specs as specs
from torchx.components.dist import ddp, parse_nnodes

DEFAULT_SCRIPT = "mlet_dist/train.py"
DEFAULT_VENV = ".venv"
ROLE_NAME = "trainer"


class LaunchError(ValueError):
    """A user-facing problem with the launch request (raised before anything is scheduled)."""


def _esc(s: str) -> str:
    """Shell-quote, then escape '$' for torchx's macro substitution (string.Template)."""
    return shlex.quote(s).replace("$", "$$")


def script_arg(script_args: Sequence[str], flag: str) -> Optional[str]:
    """The value of `flag` in the script's argv (`--flag V` or `--flag=V`), the last one wins."""
    value = None
    for i, arg in enumerate(script_args):
        if arg == flag and i + 1 < len(script_args):
            value = script_args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def world_size_of(j: str) -> Tuple[int, int, int]:
    """(min nodes, max nodes, processes per node) of a -j spec like 2x8 or 1:4x8."""
    try:
        min_nodes, max_nodes, nproc, _ = parse_nnodes(j)
    except ValueError as e:
        raise LaunchError(f"-j {j!r}: expected NODESxPROCS (e.g. 2x8) or MIN:MAXxPROCS (e.g. 1:4x8)") from e
    if max_nodes < 1 or nproc < 1:
        raise LaunchError(f"-j {j!r}: needs at least one node and one process per node")
    return min_nodes, max_nodes, nproc


def plan_world_size(plan: str) -> Optional[int]:
    """The world size a sharding plan was made for, or None when the file does not say.

    Reads JSON with a top-level "world_size" (or one under "topology"/"meta"). The plan format
    belongs to mlet-plan (sharded-MLET issue); this only reads the one field it needs.
    """
    try:
        payload = json.loads(Path(plan).read_text())
    except (OSError, ValueError) as e:
        raise LaunchError(f"--plan {plan}: cannot read it as JSON ({e})") from e
    for holder in (payload, payload.get("topology", {}), payload.get("meta", {})):
        if isinstance(holder, dict) and isinstance(holder.get("world_size"), int):
            return int(holder["world_size"])
    return None


def job_spec_for(world: int, nproc: int, gpus_per_node: int = 0) -> str:
    """The -j to suggest for ``world`` ranks: with GPUs, one process per GPU, so NODES x GPUS (a
    suggestion built from -j's PROCS instead told a 2x4 --gpu 8 job with a 16-rank plan -j 4x4:
    four nodes each using half its GPUs); without, the PROCS the user gave."""
    per_node = gpus_per_node if gpus_per_node > 0 else nproc
    if world % per_node == 0:
        return f"-j {world // per_node}x{per_node}"
    if world < per_node:
        return f"-j 1x{world}"
    return f"a -j whose NODESxPROCS = {world}"


def check_plan_world(plan: str, j: str, gpus_per_node: int = 0) -> None:
    """A plan is made for one world size: the job must run exactly that many ranks."""
    min_nodes, max_nodes, nproc = world_size_of(j)
    planned = plan_world_size(plan)
    if planned is None:
        warnings.warn(f"--plan {plan}: no world_size in it; cannot check it against -j {j}")
        return
    hint = job_spec_for(planned, nproc, gpus_per_node)
    if min_nodes != max_nodes:
        raise LaunchError(
            f"--plan {plan} is for world size {planned}, but -j {j} is elastic "
            f"({min_nodes * nproc}..{max_nodes * nproc} ranks): a sharding plan fixes the world size; "
            f"use {hint} or drop --plan"
        )
    if planned != max_nodes * nproc:
        raise LaunchError(
            f"plan/world mismatch: --plan {plan} was made for world size {planned}, but -j {j} "
            f"launches {max_nodes} x {nproc} = {max_nodes * nproc} ranks. Use {hint}, or make a plan "
            f"for {max_nodes * nproc} ranks with mlet-plan (launch/README.md, step 2)"
        )


def parse_volume(spec: str, dst: str, read_only: bool) -> List[str]:
    """`pvc:NAME` (Kubernetes PersistentVolumeClaim) or `/host/path` -> torchx mount spec tokens."""
    ro = ["readonly"] if read_only else []
    if spec.startswith("pvc:"):
        return ["type=volume", f"src={spec[4:]}", f"dst={dst}"] + ro
    if spec.startswith("/"):
        return ["type=bind", f"src={spec}", f"dst={dst}"] + ro
    raise LaunchError(f"volume {spec!r}: expected pvc:CLAIM_NAME or an absolute host path")


def preflight_script(venv: str, data: Optional[str], plan: Optional[str]) -> str:
    """bash run on every node before torchrun: each failure names the node and exits non-zero."""
    node = "node $${HOSTNAME:-$$(uname -n)} (cwd $$PWD)"
    lines = []
    if venv:
        v = _esc(venv)
        lines.append(f"if [ -f {v}/bin/activate ]; then . {v}/bin/activate; fi")
    lines.append(
        "if ! command -v torchrun >/dev/null 2>&1; then "
        f'echo "mlet launch error on {node}: torchrun is not on PATH'
        + (f' (no venv at "{_esc(venv)}"/bin/activate)' if venv else "")
        + ". Install the project on the nodes (scripts/setup_env.sh), pass --venv PATH_OF_THE_VENV,"
        ' or put the bin dir of the venv on PATH in the image." >&2; exit 127; fi'
    )
    if data:
        d = _esc(data)
        lines.append(
            f"if [ ! -f {d}/meta.json ]; then "
            f'echo "mlet launch error on {node}: no prepared dataset at "{d}" (missing meta.json). '
            "Every node must see the data: prepare it once on a shared filesystem (mlet-prep) or mount "
            'it (--data_volume pvc:NAME or --data_volume /host/path); see launch/README.md." >&2; exit 2; fi'
        )
    if plan:
        p = _esc(plan)
        lines.append(
            f'if [ ! -f {p} ]; then echo "mlet launch error on {node}: sharding plan "{p}" not found; '
            'put it on a shared filesystem or in a mounted volume." >&2; exit 2; fi'
        )
    return "; ".join(lines)


def train(
    *script_args: str,
    j: str = "1x2",
    gpu: int = 0,
    cpu: int = 4,
    memMB: int = 16384,
    h: Optional[str] = None,
    image: str = "mlet-dist:latest",
    venv: str = DEFAULT_VENV,
    script: str = DEFAULT_SCRIPT,
    name: str = "/mlet-train",
    plan: Optional[str] = None,
    data_volume: Optional[str] = None,
    runs_volume: Optional[str] = None,
    mounts: Optional[List[str]] = None,
    env: Optional[Dict[str, str]] = None,
    threads: int = 0,
    ifname: Optional[str] = None,
    max_restarts: int = 0,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    rdzv_backend: str = "c10d",
    debug: bool = False,
    tee: int = 3,
) -> specs.AppDef:
    """
    Train DLRM with MLET embeddings on NODES x PROCS ranks (torchrun, c10d rendezvous).

    Usage: torchx run -s local_cwd launch/components.py:train -j 1x2 -- --data DIR --run-dir DIR
           torchx run -s slurm launch/components.py:train -j 2x8 --gpu 8 --cpu 64 --memMB 480000 mlet_dist/train.py --data DIR --run-dir DIR

    Args:
        script_args: arguments of mlet_dist/train.py (after --, or after the script path as first argument); --data is required
        j: NODESxPROCS per node (e.g. 2x8), or MIN:MAXxPROCS for an elastic node count
        gpu: GPUs per node (one process per GPU: PROCS <= gpu); 0 trains on CPU with gloo
        cpu: CPUs per node (also sets OMP/MKL threads = cpu // PROCS unless --threads)
        memMB: memory per node in MB (on Kubernetes /dev/shm is memory-backed and counts here)
        h: a torchx named resource; takes precedence over cpu/gpu/memMB
        image: container image (Kubernetes, docker); ignored by local_cwd and slurm
        venv: venv activated on each node before torchrun when it exists there (relative to the job's working dir); '' for none
        script: the training entry point, relative to the job's working dir
        name: {experiment}/{run} name of the job
        plan: sharding plan from mlet-plan, passed to train.py as --plan; its world size must equal NODES x PROCS
        data_volume: where --data comes from on the nodes: pvc:CLAIM or /host/path, mounted read-only at the parent dir of --data
        runs_volume: where --run-dir goes: pvc:CLAIM or /host/path, mounted read-write at the parent dir of --run-dir
        mounts: extra torchx mounts (type=bind|volume,src=...,dst=...[,readonly])
        env: extra environment variables (A=1,B=2); they override the defaults set here
        threads: OMP/MKL threads per process; 0 derives it from cpu // PROCS
        ifname: network interface for gloo and NCCL (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME)
        max_restarts: torchrun restarts of all workers in place after a worker failure
        max_retries: scheduler-level retries of the whole job (slurm requeue, Volcano maxRetry)
        rdzv_port: port of the c10d rendezvous store on the first node (multi-node)
        rdzv_backend: torchrun rendezvous backend (c10d; static needs no store)
        debug: NCCL/torch.distributed debug flags
        tee: which streams torchrun tees to its log files (3: stdout and stderr)
    """
    script_args = list(script_args)
    if script_args and script_args[0].endswith(".py"):
        # `torchx run launch/components.py:train -j 2x8 mlet_dist/train.py --data DIR`: the form
        # users know from dist.ddp (whose script must be given as --script)
        if script not in (DEFAULT_SCRIPT, script_args[0]):
            raise LaunchError(f"two entry points: --script {script} and {script_args[0]}; give one")
        script = script_args.pop(0)
    min_nodes, max_nodes, nproc = world_size_of(j)
    wants_help = any(a in ("-h", "--help") for a in script_args)
    data = script_arg(script_args, "--data")
    run_dir = script_arg(script_args, "--run-dir")
    if data is None and not wants_help:
        raise LaunchError(
            "no dataset: pass train.py's arguments after --, e.g. "
            "`torchx run launch/components.py:train -j 1x2 -- --data DIR --run-dir DIR` "
            "(prepare DIR once with mlet-prep; see launch/README.md)"
        )
    if gpu < 0 or cpu < 0 or memMB < 0 or max_restarts < 0 or max_retries < 0:
        raise LaunchError("gpu, cpu, memMB, max_restarts and max_retries must be >= 0")
    if gpu > 0 and nproc > gpu:
        raise LaunchError(
            f"-j {j} starts {nproc} processes per node but --gpu {gpu}: one process per GPU, use -j {max_nodes}x{gpu}"
        )
    if gpu > 0 and nproc < gpu:
        warnings.warn(f"-j {j} uses {nproc} of the {gpu} GPUs requested per node")

    if plan is not None and script_arg(script_args, "--plan") is not None:
        raise LaunchError("give the plan once: either the component's --plan or train.py's --plan")
    plan = plan if plan is not None else script_arg(script_args, "--plan")
    if plan is not None:
        if os.path.isfile(plan):  # visible from here: check it now, not after the queue
            check_plan_world(plan, j, gpu)
        if script_arg(script_args, "--plan") is None:
            script_args += ["--plan", plan]

    all_mounts: List[str] = []
    if data_volume:
        if not data or not data.startswith("/"):
            raise LaunchError("--data_volume needs an absolute --data (the path inside the job)")
        all_mounts += parse_volume(data_volume, str(Path(data).parent), read_only=True)
    if runs_volume:
        if not run_dir or not run_dir.startswith("/"):
            raise LaunchError("--runs_volume needs an absolute --run-dir (the path inside the job)")
        all_mounts += parse_volume(runs_volume, str(Path(run_dir).parent), read_only=False)
    all_mounts += list(mounts or [])

    app = ddp(
        *script_args,
        script=script,
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=None,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        rdzv_backend=rdzv_backend,
        mounts=all_mounts or None,
        debug=debug,
        tee=tee,
    )
    role = app.roles[0]
    role.name = ROLE_NAME

    cpus_per_node = role.resource.cpu  # from h when a named resource was given
    n_threads = threads if threads > 0 else max(1, int(cpus_per_node) // nproc) if cpus_per_node > 0 else 1
    defaults = {
        "OMP_NUM_THREADS": str(n_threads),
        "MKL_NUM_THREADS": str(n_threads),
        "PYTHONUNBUFFERED": "1",
        # a hung collective becomes an error (and a torchrun restart) instead of a stuck job
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "NCCL_DEBUG": "WARN",
    }
    if ifname:
        defaults["GLOO_SOCKET_IFNAME"] = ifname
        defaults["NCCL_SOCKET_IFNAME"] = ifname
    role.env = {**defaults, **role.env, **(env or {})}

    # ddp's command is "torchrun <rendezvous flags> script args": run the preflight first and add
    # torchrun's own restart budget.
    cmd = role.args[-1]
    if role.args[:1] != ["-c"] or not cmd.startswith("torchrun "):
        raise RuntimeError(f"unexpected dist.ddp command (torchx changed?): {role.args}")
    torchrun = f"torchrun --max-restarts {max_restarts} " + cmd[len("torchrun ") :]
    role.args = ["-c", preflight_script(venv, data, plan) + "; exec " + torchrun]
    return app
