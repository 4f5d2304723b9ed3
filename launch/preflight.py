"""Check, from the machine you submit from, what a launch needs before it waits in a queue.

    python -m launch.preflight -s local_cwd --data /tmp/criteo
    python -m launch.preflight -s slurm -j 2x8 --data /shared/criteo --venv /shared/mlet/.venv
    python -m launch.preflight -s kubernetes -j 2x8 --plan plans/2x8.json

Prints one line per check ("ok", "warn" or "error") and exits 1 if any check failed. The same
torchrun / data / plan checks run again on every node when the job starts (launch/components.py).
"""

import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch.components import LaunchError, check_plan_world, world_size_of  # noqa: E402

SCHEDULERS = ("local_cwd", "slurm", "kubernetes")
SLURM_TOOLS = ("sbatch", "squeue", "sacct", "scancel")
Result = Tuple[str, str]  # (level, message)


def find_torchrun(venv: Optional[str]) -> Optional[str]:
    if venv:
        candidate = Path(venv) / "bin" / "torchrun"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("torchrun")


def check_torchrun(venv: Optional[str]) -> Result:
    found = find_torchrun(venv)
    if found:
        return "ok", f"torchrun: {found}"
    where = f" (no {venv}/bin/torchrun either)" if venv else ""
    return "error", (
        f"torchrun is not on PATH{where}: torchx starts every node with torchrun. Activate the "
        "project's venv (. .venv/bin/activate; scripts/setup_env.sh creates it) or pass --venv"
    )


def check_venv(venv: str) -> Result:
    """An explicit --venv must exist: the nodes activate it, and a missing one would silently fall
    back to whatever torchrun is on PATH here (the old preflight said `ok torchrun` for it)."""
    if (Path(venv) / "bin" / "activate").is_file():
        return "ok", f"venv: {venv}"
    return "error", (
        f"venv: {venv} does not exist here (no {venv}/bin/activate). Every node activates --venv before "
        "torchrun: give the venv's path as the nodes see it (Slurm: on the shared filesystem; "
        "scripts/setup_env.sh PATH creates one)"
    )


def check_scheduler(scheduler: str) -> List[Result]:
    if scheduler == "local_cwd":
        return [("ok", "local_cwd: runs here, needs nothing else")]
    if scheduler == "slurm":
        missing = [t for t in SLURM_TOOLS if shutil.which(t) is None]
        if missing:
            return [
                (
                    "error",
                    (
                        f"slurm: {', '.join(missing)} not on PATH: torchx submits with sbatch and follows the "
                        "job with squeue/sacct. Run torchx on a Slurm login node (or a host with the Slurm "
                        "client tools and munge set up), or use -s local_cwd / -s kubernetes"
                    ),
                )
            ]
        return [("ok", "slurm: " + ", ".join(shutil.which(t) or t for t in SLURM_TOOLS))]
    if scheduler == "kubernetes":
        if importlib.util.find_spec("kubernetes") is None:
            return [
                (
                    "error",
                    (
                        "kubernetes: the `kubernetes` python package is not installed in this environment: "
                        "pip install -r requirements/common.txt (it pins kubernetes)"
                    ),
                )
            ]
        from kubernetes import config

        try:
            config.load_kube_config()
        except Exception as kube_error:  # noqa: BLE001 - any failure means no usable kubeconfig
            try:
                config.load_incluster_config()
            except Exception:  # noqa: BLE001
                return [
                    (
                        "error",
                        (
                            f"kubernetes: no usable kubeconfig ({kube_error}). Point KUBECONFIG at your "
                            "cluster's config (kubectl must work: `kubectl get queues.scheduling.volcano.sh`); "
                            "the cluster needs Volcano (torchx submits a batch.volcano.sh Job)"
                        ),
                    )
                ]
        return [("ok", "kubernetes: kubeconfig loads (Volcano itself is checked at submit time)")]
    return [("error", f"unknown scheduler {scheduler!r}; one of {', '.join(SCHEDULERS)}")]


def check_data(scheduler: str, data: Optional[str]) -> Result:
    if data is None:
        return "warn", "data: not given (--data), not checked"
    if scheduler == "kubernetes":
        return "ok", f"data: {data} is checked on every pod at start (it lives in the mounted volume)"
    if (Path(data) / "meta.json").is_file():
        where = " (on a shared filesystem, every node must see this same path)" if scheduler == "slurm" else ""
        return "ok", f"data: {data}{where}"
    return "error", (
        f"data: no prepared dataset at {data} (missing meta.json). Prepare it once with "
        f"`mlet-prep criteo-kaggle TRAIN.txt {data}`"
        + (" on a filesystem every node mounts at the same path" if scheduler == "slurm" else "")
    )


def check_plan(plan: Optional[str], j: str) -> Result:
    if plan is None:
        return "ok", "plan: none (the planner shards at start)"
    if not Path(plan).is_file():
        return "error", f"plan: {plan} not found"
    try:
        check_plan_world(plan, j)
    except LaunchError as e:
        return "error", str(e)
    return "ok", f"plan: {plan} matches -j {j}"


def run_checks(
    scheduler: str, j: str, data: Optional[str], plan: Optional[str], venv: Optional[str], venv_given: bool = False
) -> List[Result]:
    results: List[Result] = []
    try:
        world_size_of(j)
    except LaunchError as e:
        results.append(("error", str(e)))
    if scheduler != "kubernetes":  # on kubernetes torchrun (and the venv) come with the image
        if venv and venv_given:
            results.append(check_venv(venv))
        results.append(check_torchrun(venv))
    results += check_scheduler(scheduler)
    results.append(check_data(scheduler, data))
    results.append(check_plan(plan, j))
    return results


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m launch.preflight", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-s", "--scheduler", choices=SCHEDULERS, default="local_cwd")
    p.add_argument("-j", default="1x2", help="NODESxPROCS, as given to the component")
    p.add_argument("--data", help="prepared dataset dir, as given to train.py")
    p.add_argument("--plan", help="sharding plan from mlet-plan")
    p.add_argument(
        "--venv",
        default=None,
        help="the venv the nodes activate, as given to the component (default: $VIRTUAL_ENV or .venv)",
    )
    args = p.parse_args(argv)
    venv = args.venv or os.environ.get("VIRTUAL_ENV") or ".venv"
    results = run_checks(args.scheduler, args.j, args.data, args.plan, venv, venv_given=args.venv is not None)
    for level, message in results:
        print(f"{level:5s} {message}")
    failed = any(level == "error" for level, _ in results)
    print("preflight: " + ("FAILED" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
