"""Process-group setup: gloo on CPU, nccl with CUDA, the same code under torchrun and torchx."""

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def choose_backend(requested: Optional[str]) -> str:
    """nccl when CUDA is present, gloo otherwise; a requested nccl without CUDA fails early."""
    if requested in (None, "", "auto"):
        return "nccl" if torch.cuda.is_available() else "gloo"
    if requested not in BACKENDS:
        raise ValueError(f"--backend must be one of auto, {', '.join(BACKENDS)}; got {requested!r}")
    if requested == "nccl" and not torch.cuda.is_available():
        raise RuntimeError(
            "--backend nccl needs CUDA, but torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}). Use --backend gloo (or auto) on CPU."
        )
    return requested


DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0


def init_distributed(backend: Optional[str] = None, timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> DistEnv:
    """Join the job started by torchrun/torchx, or form a 1-rank group when run directly.

    ``timeout_s`` bounds every collective: a peer that neither answers nor exits (a hung
    filesystem, a stuck kernel) ends the job with an error instead of holding it forever."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not launched:
        if "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ:
            raise RuntimeError(
                "partial torchrun environment (WORLD_SIZE/LOCAL_RANK without RANK): launch with "
                "`torchrun --nproc-per-node N mlet_dist/train.py ...` or run without those variables"
            )
        os.environ.update(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    backend = choose_backend(backend)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs visible: "
                "lower --nproc-per-node to the GPUs per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        _init_process_group(backend, rank, world_size, timedelta(seconds=timeout_s))
    return DistEnv(rank, world_size, local_rank, local_world_size, device, backend)


def _init_process_group(backend: str, rank: int, world_size: int, timeout: timedelta) -> None:
    """Under torchelastic, rendezvous on the agent's store with a per-attempt prefix.

    Seen with torch 2.13 + gloo: after a torchrun restart (--max-restarts), the default env://
    init of the new attempt read stale peer addresses and failed in connectFullMesh. A prefix
    naming the run and the restart count keeps every attempt's keys apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=backend, timeout=timeout)
        return
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(minutes=10),
    )
    prefix = f"mlet/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    dist.init_process_group(
        backend=backend, store=dist.PrefixStore(prefix, store), rank=rank, world_size=world_size, timeout=timeout
    )


def shutdown_distributed() -> None:
    """Orderly end of a successful run (a barrier: never call it on a failure path, where a peer
    may be waiting in another collective)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
