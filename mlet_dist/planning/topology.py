"""Cluster shapes given as ``NxM`` (N nodes x M ranks per node) and TorchRec Topologies for them."""

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:
    from torchrec.distributed.planner import Topology


GIB = 1 << 30
DEVICES = ("cuda", "cpu")
# Far above any cluster (the committed plans go to 64x8); TorchRec builds one device record per
# rank, so 100000x100000 would grow until the machine runs out of memory instead of failing.
MAX_WORLD_SIZE = 65536
MAX_RANKS_PER_NODE = 1024
MAX_MEMORY_GB = 1 << 20  # 1 PiB per device or rank: a typo, not a machine (and byte counts stay int64)
_WORLD = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


class TopologyError(ValueError):
    """A --world / device / memory combination that cannot be planned for."""


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    ranks_per_node: int
    device: str
    mem_bytes: int  # where the tables live: HBM per GPU (cuda) or DDR per rank (cpu)
    ddr_bytes: int  # host memory per rank (cpu: same as mem_bytes)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def shape(self) -> str:
        return f"{self.nodes}x{self.ranks_per_node}"

    @property
    def memory_kind(self) -> str:
        return "hbm" if self.device == "cuda" else "ddr"

    def topology(self, process_bytes: int = 0) -> "Topology":
        """TorchRec's Topology; ``process_bytes``: what each CPU rank's own process holds besides
        the model (not in the memory the tables may use; GPUs keep tables off the host)."""
        from torchrec.distributed.planner import Topology

        # TorchRec logs a warning for every Topology not made by its TopologyFactory; the
        # factory needs a hardware registry we do not have offline, so build it directly.
        log = logging.getLogger("torchrec.distributed.planner.types")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            return Topology(
                world_size=self.world_size,
                local_world_size=self.ranks_per_node,
                compute_device=self.device,
                hbm_cap=self.mem_bytes if self.device == "cuda" else None,
                ddr_cap=self.ddr_bytes - (process_bytes if self.device == "cpu" else 0),
            )
        finally:
            log.setLevel(level)

    def as_dict(self) -> Dict[str, Any]:
        """The plan file's ``topology`` (world_size/local_world_size/compute_device as train.py writes)."""
        return {
            "world_size": self.world_size,
            "local_world_size": self.ranks_per_node,
            "compute_device": self.device,
            "nodes": self.nodes,
            f"{self.memory_kind}_cap_bytes": self.mem_bytes,
            **({"ddr_cap_bytes": self.ddr_bytes} if self.device == "cuda" else {}),
        }


def parse_world(text: str) -> tuple:
    """'2x8' -> (2, 8). Raises TopologyError with the accepted form."""
    match = _WORLD.match(text or "")
    if not match:
        raise TopologyError(f"--world must be NxM (nodes x ranks per node), e.g. 1x2 or 2x8; got {text!r}")
    nodes, per_node = int(match.group(1)), int(match.group(2))
    if nodes < 1 or per_node < 1:
        raise TopologyError(f"--world {text!r}: nodes and ranks per node must both be >= 1")
    if per_node > MAX_RANKS_PER_NODE or nodes * per_node > MAX_WORLD_SIZE:
        raise TopologyError(
            f"--world {text!r}: at most {MAX_RANKS_PER_NODE} ranks per node and "
            f"{MAX_WORLD_SIZE} ranks in all, got {per_node} per node, {nodes * per_node} in all"
        )
    return nodes, per_node


def cluster_spec(
    world: str, device: str, hbm_gb: Optional[float] = None, ddr_gb: Optional[float] = None
) -> ClusterSpec:
    nodes, per_node = parse_world(world)
    if device not in DEVICES:
        raise TopologyError(f"--device must be one of {', '.join(DEVICES)}; got {device!r}")
    for flag, value in (("--hbm-gb", hbm_gb), ("--ddr-gb", ddr_gb)):
        if value is not None and not 0 < value <= MAX_MEMORY_GB:
            raise TopologyError(f"{flag} must be > 0 and <= {MAX_MEMORY_GB} (GiB per device), got {value}")
    from torchrec.distributed.planner.constants import DDR_CAP

    ddr = int(ddr_gb * GIB) if ddr_gb is not None else DDR_CAP
    if device == "cuda":
        if hbm_gb is None:
            raise TopologyError("--device cuda needs the memory per GPU: --hbm-gb (e.g. 80 for an H100)")
        return ClusterSpec(nodes, per_node, device, int(hbm_gb * GIB), ddr)
    if hbm_gb is not None:
        raise TopologyError("--hbm-gb is GPU memory; for --device cpu give the memory per rank with --ddr-gb")
    return ClusterSpec(nodes, per_node, device, ddr, ddr)
