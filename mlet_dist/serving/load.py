"""Load a serving directory into a plain model (one process) or a DMP-sharded one (any world size).

Both check the directory first (``open_serving_dir``: manifest, sizes, sha256, key agreement) and
read the checkpoint through ``SafeFileSystemReader`` (no pickle). DCP reshards the d-wide tables
from the layout they were written in (the training ranks') into whatever the loader holds.
"""

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.models.dlrm import DLRMTrain

from mlet_dist.planning.plan_io import PlanMismatchError, check_plan_fits, load_plan
from mlet_dist.serving.manifest import ServingDir, ServingDirError, open_serving_dir
from mlet_dist.serving.model import ServingTopology, build_serving_model, plan_serving
from mlet_dist.serving.no_random_init import NoRandomInit
from mlet_dist.distributed.safe_dcp import SafeFileSystemReader

PathLike = Union[str, Path]


def _reader(sd: ServingDir) -> SafeFileSystemReader:
    return SafeFileSystemReader(sd.checkpoint, allowed_files=sd.checkpoint_files)


def _load_into(state: dict, sd: ServingDir, no_dist: bool) -> None:
    try:
        dcp.load(state, storage_reader=_reader(sd), no_dist=no_dist)
    except (Exception, CheckpointException) as err:  # DCP's CheckpointException is a BaseException
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ServingDirError(f"cannot load the checkpoint of {sd.path}: {last[:400]}") from err


def load_serving_model(
    serving_dir: PathLike, device: Union[str, torch.device] = "cpu", verify: bool = True
) -> Tuple[DLRMTrain, ServingDir]:
    """The whole collapsed model in this process (a stock TorchRec ``DLRMTrain``), in eval mode.

    Independent of any process group (each caller loads its own copy)."""
    sd = open_serving_dir(serving_dir, verify=verify, collective=False)
    device = torch.device(device)
    model = build_serving_model(sd.model_config, torch.device("meta"))
    keys = set(model.state_dict())
    if all(name in keys for name, _ in model.named_parameters()) and all(
        name in keys for name, _ in model.named_buffers()
    ):
        model = model.to_empty(device=device)  # every tensor is filled by the checkpoint below
    else:  # a non-persistent buffer (InteractionArch's triu_indices) is computed in __init__: build it,
        with NoRandomInit():  # without drawing the init of the parameters the checkpoint fills
            model = build_serving_model(sd.model_config, device)
    state = model.state_dict()
    _load_into(state, sd, no_dist=True)
    model.load_state_dict(state)
    return model.eval(), sd


def load_serving_sharded(
    serving_dir: PathLike,
    device: Optional[torch.device] = None,
    plan: Union[str, ShardingPlan] = "auto",
    sharding: str = "auto",
    sharders: Optional[Sequence[nn.Module]] = None,
    verify: bool = True,
) -> Tuple[DistributedModelParallel, ServingDir]:
    """The collapsed model sharded over the current process group by TorchRec's DMP.

    ``plan``: "auto" takes the directory's serving plan if it was made for this world size and
    device type, else plans anew (``sharding`` forces one type); "saved" insists on the saved
    plan; "replan" always plans; or pass a ShardingPlan. Collective: call on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("load_serving_sharded needs an initialised process group (init_distributed())")
    world = dist.get_world_size()
    device = device or (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    )
    sd = open_serving_dir(serving_dir, verify=verify)
    config = sd.model_config
    model = build_serving_model(config, torch.device("meta"))
    if sharders is None:
        from mlet_dist.distributed.sharding import EBCSharder

        sharders = [EBCSharder()]
    chosen: ShardingPlan
    if isinstance(plan, ShardingPlan):
        chosen = plan
    else:
        saved_fits = sd.topology.world_size == world and sd.topology.compute_device == device.type
        if plan == "saved" or (plan == "auto" and saved_fits):
            try:
                chosen, data = load_plan(sd.plan_file)
                check_plan_fits(chosen, model, world, device.type, data.get("topology"), str(sd.plan_file))
            except PlanMismatchError as err:
                raise ServingDirError(f"{err} (or load with plan='replan')") from err
        elif plan in ("auto", "replan"):
            import os

            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            topology = ServingTopology(
                world_size=world, local_world_size=local if world % local == 0 else world, compute_device=device.type
            )
            chosen = plan_serving(config, topology, sharding, sharders=sharders, collective=True)
        else:
            raise ValueError(f"plan must be 'auto', 'saved', 'replan' or a ShardingPlan, got {plan!r}")
    with NoRandomInit():  # every parameter is loaded below
        dmp = DistributedModelParallel(module=model, device=device, plan=chosen, sharders=list(sharders))
    state = dmp.state_dict()
    _load_into(state, sd, no_dist=False)
    dmp.load_state_dict(state)
    dmp.eval()
    return dmp, sd
