"""The serving model: a stock TorchRec model rebuilt from a JSON description, no mlet_dist class.

``build_serving_model`` uses TorchRec classes only (``EmbeddingBagCollection``, ``DLRM`` /
``DLRM_DCN``, ``DLRMTrain``), so a serving directory can be loaded by anyone with TorchRec
(tests/test_serving_distributed.py does it with TorchRec and torch alone). One setting is not
TorchRec's default: ``bottom_mlp_output: "linear"`` in the manifest (the default since issue 28)
means the bottom MLP's last layer has no ReLU: on a stock model, set
``dense_arch.model._mlp[-1]._activation_fn = torch.nn.Identity()``.
"""

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import PlannerError
from torchrec.distributed.types import ShardingPlan
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRMTrain
from torchrec.modules.crossnet import CrossNet
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.distributed.sharding import SHARDING_CHOICES, MeanSafeEBCSharder, constraints_for_tables
from mlet_dist.models.dcn import ARCHS
from mlet_dist.models.dlrm import BOTTOM_MLP_OUTPUTS, set_bottom_mlp_output
from mlet_dist.models.ranking import ModelConfig

EBC_PATH = "model.sparse_arch.embedding_bag_collection"  # in DLRMTrain
SERVING_SHARDING_CHOICES = SHARDING_CHOICES  # the same names as training's --sharding


@dataclass
class TableSpec:
    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: List[str]
    pooling: str = "SUM"
    inner_dim: Optional[int] = None  # the MLET k it was trained with (information only)

    def config(self) -> EmbeddingBagConfig:
        return EmbeddingBagConfig(
            name=self.name,
            num_embeddings=self.num_embeddings,
            embedding_dim=self.embedding_dim,
            feature_names=list(self.feature_names),
            pooling=PoolingType[self.pooling],
        )


@dataclass
class ServingModelConfig:
    """Everything needed to rebuild the collapsed model; stored in the manifest as JSON."""

    arch: str
    dense_in_features: int
    dense_arch_layer_sizes: List[int]
    over_arch_layer_sizes: List[int]
    tables: List[TableSpec]
    dcn_num_layers: Optional[int] = None
    dcn_low_rank: Optional[int] = None  # 0: full-rank CrossNet
    extra: Dict[str, Any] = field(default_factory=dict)
    # "relu": TorchRec's DenseArch, and what a manifest written before the key existed was trained with
    bottom_mlp_output: str = "relu"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {ARCHS}")
        if self.bottom_mlp_output not in BOTTOM_MLP_OUTPUTS:
            raise ValueError(f"bottom_mlp_output must be one of {BOTTOM_MLP_OUTPUTS}, got {self.bottom_mlp_output!r}")
        if not self.tables:
            raise ValueError("a serving model needs at least one table")
        dims = {t.embedding_dim for t in self.tables}
        if len(dims) != 1:
            raise ValueError(f"{self.arch} needs one embedding width for all tables, got {sorted(dims)}")
        if self.arch == "dcnv2" and (self.dcn_num_layers is None or self.dcn_low_rank is None):
            raise ValueError("arch dcnv2 needs dcn_num_layers and dcn_low_rank")

    @property
    def embedding_dim(self) -> int:
        return self.tables[0].embedding_dim

    @property
    def feature_names(self) -> List[str]:
        return [f for t in self.tables for f in t.feature_names]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ServingModelConfig":
        data = dict(data)
        data["tables"] = [TableSpec(**t) for t in data["tables"]]
        return cls(**data)

    @classmethod
    def from_model(
        cls, model: ModelConfig, table_sizes: Dict[str, int], num_dense: int, pooling: Optional[Dict[str, str]] = None
    ) -> "ServingModelConfig":
        """The collapsed form of ``model`` (a run's ModelConfig) for the dataset's table sizes and pooling."""
        from mlet_dist.models.embedding_tables import build_embedding_collection

        collection = build_embedding_collection(
            table_sizes, model.embedding, device=torch.device("meta"), pooling=pooling
        )
        inner = {c.name: c.inner_dim for c in getattr(collection, "mlet_configs", lambda: [])()}
        tables = [
            TableSpec(
                c.name, c.num_embeddings, c.embedding_dim, list(c.feature_names), c.pooling.name, inner.get(c.name)
            )
            for c in collection.embedding_bag_configs()
        ]
        dcn = model.arch == "dcnv2"
        return cls(
            arch=model.arch,
            dense_in_features=num_dense,
            dense_arch_layer_sizes=[*model.dlrm.bottom_mlp, model.embedding.embedding_dim],
            over_arch_layer_sizes=list(model.dlrm.top_mlp),
            tables=tables,
            dcn_num_layers=model.dcn.cross_layers if dcn else None,
            dcn_low_rank=model.dcn.low_rank if dcn else None,
            extra={"mlet": bool(inner), "inner_dim": model.embedding.inner_dim if inner else None},
            bottom_mlp_output=model.dlrm.bottom_mlp_output,
        )

    @classmethod
    def from_train_config(
        cls, cfg: Any, table_sizes: Dict[str, int], num_dense: int, pooling: Optional[Dict[str, str]] = None
    ) -> "ServingModelConfig":
        """``from_model`` for a TrainConfig, or anything holding ModelConfig's fields (``embedding``,
        ``dlrm``; ``arch`` and ``dcn`` default to ModelConfig's)."""
        return cls.from_model(ModelConfig.of(cfg), table_sizes, num_dense, pooling)


def build_serving_model(config: ServingModelConfig, device: torch.device = torch.device("cpu")) -> DLRMTrain:
    """``DLRMTrain(DLRM(EmbeddingBagCollection))`` (or ``DLRM_DCN``), stock TorchRec only.

    On ``device="meta"`` nothing is allocated (DCP or DMP fill the weights later)."""
    ebc = EmbeddingBagCollection(tables=[t.config() for t in config.tables], device=device)
    if config.arch == "dlrm":
        model: nn.Module = DLRM(
            embedding_bag_collection=ebc,
            dense_in_features=config.dense_in_features,
            dense_arch_layer_sizes=list(config.dense_arch_layer_sizes),
            over_arch_layer_sizes=list(config.over_arch_layer_sizes),
            dense_device=device,
        )
    else:
        assert config.dcn_num_layers is not None and config.dcn_low_rank is not None
        # TorchRec's cross networks have no reset_parameters: build them on CPU even for meta
        # (they are small), as mlet_dist.models.dcn does.
        with torch.device("cpu" if device.type == "meta" else device):
            dcn = DLRM_DCN(
                embedding_bag_collection=ebc,
                dense_in_features=config.dense_in_features,
                dense_arch_layer_sizes=list(config.dense_arch_layer_sizes),
                over_arch_layer_sizes=list(config.over_arch_layer_sizes),
                dcn_num_layers=config.dcn_num_layers,
                dcn_low_rank_dim=max(config.dcn_low_rank, 1),
                dense_device=device,
            )
            if config.dcn_low_rank == 0:
                width = (len(config.feature_names) + 1) * config.embedding_dim
                dcn.inter_arch.crossnet = CrossNet(in_features=width, num_layers=config.dcn_num_layers)
        model = dcn
    set_bottom_mlp_output(model.dense_arch, config.bottom_mlp_output)
    return DLRMTrain(model)


def expected_state_shapes(config: ServingModelConfig) -> Dict[str, List[int]]:
    """key -> shape of the serving model's state dict (built on meta: no memory)."""
    return {k: list(v.shape) for k, v in build_serving_model(config, torch.device("meta")).state_dict().items()}


def table_keys(config: ServingModelConfig) -> Dict[str, str]:
    """table name -> its state dict key in the serving model."""
    return {t.name: f"{EBC_PATH}.embedding_bags.{t.name}.weight" for t in config.tables}


@dataclass
class ServingTopology:
    """Where the model will be served: planned for this, whatever it was trained on."""

    world_size: int = 1
    local_world_size: Optional[int] = None
    compute_device: str = "cpu"

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"serving world size must be >= 1, got {self.world_size}")
        if self.local_world_size is None:
            self.local_world_size = self.world_size
        if self.world_size % self.local_world_size:
            raise ValueError(
                f"serving world size {self.world_size} is not a multiple of the ranks per host "
                f"({self.local_world_size})"
            )
        if self.compute_device not in ("cpu", "cuda"):
            raise ValueError(f"serving device must be cpu or cuda, got {self.compute_device!r}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def serving_sharders() -> List[Any]:
    """Stock TorchRec's sharding types (what a plain ``DistributedModelParallel`` would plan), with
    the mean-pooling divisor corrected when the model is sharded by it."""
    return [MeanSafeEBCSharder()]


def plan_serving(
    config: ServingModelConfig,
    topology: ServingTopology,
    sharding: str = "auto",
    sharders: Optional[Sequence[Any]] = None,
    collective: bool = False,
) -> ShardingPlan:
    """TorchRec's planner for the d-wide model on ``topology`` (no process group needed).

    ``sharding`` forces one sharding type on every table (stock TorchRec offers data-parallel,
    table-wise, column-wise and table-column-wise on CPU; row-wise kinds on CUDA)."""
    if sharding not in SERVING_SHARDING_CHOICES:
        raise ValueError(f"serving sharding must be one of {SERVING_SHARDING_CHOICES}, got {sharding!r}")
    sharders = list(sharders or serving_sharders())
    offered = sharders[0].sharding_types(topology.compute_device)
    if sharding != "auto" and sharding not in offered:
        raise ValueError(
            f"sharding {sharding!r} is not offered by TorchRec's sharder on {topology.compute_device} "
            f"(offered: {offered})"
        )
    constraints = constraints_for_tables((t.name for t in config.tables), sharding)
    planner = EmbeddingShardingPlanner(
        topology=Topology(
            world_size=topology.world_size,
            local_world_size=topology.local_world_size,
            compute_device=topology.compute_device,
        ),
        constraints=constraints,
    )
    model = build_serving_model(config, torch.device("meta"))
    try:
        if collective:  # rank 0's plan on every rank of the live process group
            import torch.distributed as dist

            assert dist.GroupMember.WORLD is not None
            return planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        return planner.plan(model, sharders)
    except PlannerError as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"TorchRec's planner cannot place the d-wide tables on {topology.world_size} "
            f"{topology.compute_device} rank(s) with sharding {sharding!r}: {first}. Serve on more ranks "
            "(--serve-world-size) or let the planner choose (--serve-sharding auto)."
        ) from err
