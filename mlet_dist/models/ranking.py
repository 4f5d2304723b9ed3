"""One builder for the trainable ranking model, shared by training, offline planning and the
collapse, so a plan made by mlet-plan names the same modules and tables that mlet-train shards
and mlet-collapse loads."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import torch
from torchrec.models.dlrm import DLRMTrain
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.config_flags import SHAPE, choice, flag, nested, no_flag, switch
from mlet_dist.models.dcn import ARCHS, DCNConfig, build_dcnv2
from mlet_dist.models.dlrm import BOTTOM_MLP_OUTPUTS, DLRMConfig, build_dlrm
from mlet_dist.models.embedding_tables import EmbeddingSpec, build_embedding_collection
from mlet_dist.modules.mlet_config import MLET_INITS
from mlet_dist.modules.mlet_embedding_bag import MLETEmbeddingBagCollection


def build_ranking_model(
    arch: str,
    collection: Union[EmbeddingBagCollection, MLETEmbeddingBagCollection],
    dlrm: DLRMConfig,
    dcn: Optional[DCNConfig] = None,
    device: Optional[torch.device] = None,
) -> DLRMTrain:
    """DLRMTrain (BCE loss head) over DLRM or DCN-v2."""
    if arch == "dcnv2":
        return DLRMTrain(build_dcnv2(collection, dlrm, dcn or DCNConfig(), dense_device=device))
    if arch != "dlrm":
        raise ValueError(f"--arch must be dlrm or dcnv2, got {arch!r}")
    return DLRMTrain(build_dlrm(collection, dlrm, dense_device=device))


_EMBEDDING_FLAGS = nested(
    mlet=choice(
        "--model",
        values={"mlet": True, "baseline": False},
        group=SHAPE,
        help="mlet: k-wide tables + k×d projection; baseline: stock EBC at width d",
    ),
    embedding_dim=flag("--embedding-dim", "-d", group=SHAPE, help="output width d"),
    inner_dim=flag("--inner-dim", "-k", group=SHAPE, help="MLET inner width k (>= d)"),
    projection_init_std=flag(
        "--projection-init-std", help="default sqrt(d)/k (--mlet-init matched), sqrt(2/(k+d)) (paper) or 0.25 (authors)"
    ),
    mlet_init=flag(
        "--mlet-init",
        choices=MLET_INITS,
        help="matched (default): T·W starts with the baseline "
        "table's variance and its first rowwise-Adagrad step is lr per element, as a baseline table's "
        "(the paper init's is ~lr·sqrt(2k/d): large at small d; reports/small_d/README.md); paper (the default "
        "before issue 28): T ~ U(±sqrt(1/n)), W ~ N(0, 2/(k+d)); authors: "
        "T as paper, W ~ N(0, 0.25²), the default of the authors' code (--linp-init normal)",
    ),
    # off unless asked: the reader validated every id and the sharded kernels bound-check on the device
    validate_inputs=switch(
        "--check-inputs",
        help="also check ids and feature names in Python on every step (host syncs; the reader "
        "and the kernels' FATAL bounds check already guard the ids)",
    ),
    pooling=no_flag("per feature, from the dataset's meta.json (DatasetMeta.pooling)"),
)
_DLRM_FLAGS = nested(
    dense_in_features=no_flag("the dataset's dense feature count (model_factory's num_dense)"),
    bottom_mlp=flag("--bottom-mlp", group=SHAPE, help="d is appended"),
    top_mlp=flag("--top-mlp", group=SHAPE),
    bottom_mlp_output=flag(
        "--bottom-mlp-output",
        choices=BOTTOM_MLP_OUTPUTS,
        help="linear (default): no ReLU after the bottom MLP's d-wide last layer, so the "
        "dense features cannot be cut off by d dead units at small d (issue 28); relu: as "
        "TorchRec's DenseArch and the reference DLRM (the default before issue 28)",
    ),
)
_DCN_FLAGS = nested(
    cross_layers=flag("--dcn-layers", group=SHAPE, help="dcnv2: cross layers"),
    low_rank=flag(
        "--dcn-low-rank", group=SHAPE, help="dcnv2: rank of each cross layer's matrix; 0 = full-rank CrossNet"
    ),
)


@dataclass
class ModelConfig:
    """The model part of a run's config tree: everything that decides the parameters. Its field
    metadata declares the model's flags (config_flags.py): mlet-train and mlet-plan both derive
    them from here, so a plan is made for the model mlet-train builds from the same flags."""

    arch: str = field(
        default="dlrm",
        metadata=flag(
            "--arch",
            choices=ARCHS,
            group=SHAPE,
            help="dlrm: dot interaction; dcnv2: cross network over [bottom-MLP output, all embeddings], then "
            "--top-mlp as the deep network",
        ),
    )
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec, metadata=_EMBEDDING_FLAGS)
    dlrm: DLRMConfig = field(default_factory=DLRMConfig, metadata=_DLRM_FLAGS)
    dcn: DCNConfig = field(default_factory=DCNConfig, metadata=_DCN_FLAGS)

    @classmethod
    def of(cls, config: Any) -> "ModelConfig":
        """The model subtree of any config that has its fields (a TrainConfig, or a namespace with
        ``embedding`` and ``dlrm``); a missing field takes its default."""
        defaults = cls()
        return cls(**{f.name: getattr(config, f.name, getattr(defaults, f.name)) for f in dataclasses.fields(cls)})


def model_factory(
    cfg: ModelConfig, table_sizes: Dict[str, int], num_dense: int, pooling: Optional[Dict[str, str]] = None
) -> Callable[[torch.device], DLRMTrain]:
    """``build(device)`` for the dataset's tables (``device`` "meta" before sharding); ``pooling``:
    the dataset's per-feature pooling (``DatasetMeta.pooling``)."""
    dlrm = dataclasses.replace(cfg.dlrm, dense_in_features=num_dense)

    def build(device: torch.device) -> DLRMTrain:
        collection = build_embedding_collection(table_sizes, cfg.embedding, device=device, pooling=pooling)
        return build_ranking_model(cfg.arch, collection, dlrm, cfg.dcn, device)

    return build
