"""The private parts of TorchRec and torch our sharded modules rely on, named in one place: a
TorchRec or torch upgrade that renames one fails here, with the name and the module that needs
it, before any training run can go wrong.

Found by reading the installed sources (torchrec 1.8.0, torch 2.13): instance attributes are
checked in the class source (they are set in __init__, which needs a process group), methods
and class attributes with hasattr.
"""

import inspect
from pathlib import Path

import pytest
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torch.distributed.checkpoint import _traverse, state_dict_saver
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.remote_device import _remote_device
from torchrec.distributed.embedding_lookup import GroupedPooledEmbeddingsLookup
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.model_parallel import (
    DataParallelWrapper,
    DefaultDataParallelWrapper,
    DistributedModelParallel,
)
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import Topology
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding, ShardingEnv
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mlet_dist.distributed.safe_dcp import SafeLoadPlanner
from mlet_dist.distributed.staging import HostCopyStager

# (class, name, kind, who relies on it)
CONTRACT = [
    (ShardedEmbeddingBagCollection, "_embedding_shardings", "attr", "distributed/sharded_mlet.py: d-wide output dists"),
    (
        ShardedEmbeddingBagCollection,
        "_lookups",
        "attr",
        "distributed/sharded_mlet.py: the MLET module runs the injected sharder's lookups, then projects",
    ),
    (
        GroupedPooledEmbeddingsLookup,
        "grouped_configs",
        "attr",
        "distributed/sharded_mlet.py: where each table sits in a lookup's output",
    ),
    (ShardedEmbeddingBagCollection, "_output_dists", "attr", "distributed/sharded_mlet.py"),
    (ShardedEmbeddingBagCollection, "_embedding_names", "attr", "distributed/sharded_mlet.py"),
    (ShardedEmbeddingBagCollection, "_embedding_dims", "attr", "distributed/sharded_mlet.py"),
    (ShardedEmbeddingBagCollection, "_uncombined_embedding_names", "attr", "distributed/sharded_mlet.py"),
    (ShardedEmbeddingBagCollection, "_uncombined_embedding_dims", "attr", "distributed/sharded_mlet.py"),
    (ShardedEmbeddingBagCollection, "_sharding_types", "attr", "distributed/sharded_mlet.py"),
    (ShardedEmbeddingBagCollection, "sharding_type_to_sharding_infos", "attr", "distributed/sharded_mlet.py"),
    (ShardedEmbeddingBagCollection, "_embedding_bag_configs", "attr", "distributed/mean_pooling.py"),
    (ShardedEmbeddingBagCollection, "_pooling_type_to_rs_features", "attr", "distributed/mean_pooling.py: divisor fix"),
    (ShardedEmbeddingBagCollection, "_has_mean_pooling_callback", "attr", "distributed/mean_pooling.py"),
    (ShardedEmbeddingBagCollection, "_create_output_dist", "method", "distributed/sharded_mlet.py"),
    (ShardedEmbeddingBagCollection, "create_embedding_bag_sharding", "method", "distributed/sharded_mlet.py"),
    (
        ShardedTensor,
        "_init_from_local_shards_and_global_metadata",
        "method",
        "distributed/collapse.py, distributed/staging.py",
    ),
    (ShardedTensor, "_process_group", "attr", "distributed/staging.py"),
    (TrainPipelineSparseDist, "_pipelined_modules", "attr", "training/loop.py: reports what the pipeline overlaps"),
    (TrainPipelineSparseDist, "detach", "method", "training/loop.py: ends a segment before evaluation"),
    (_remote_device, "_device", "attr", "distributed/staging.py: host copies re-placed on cpu"),
    (AsyncStager, "_synchronize_after_execute", "attr", "distributed/staging.py: HostCopyStager sets it False"),
    (EmbeddingShardingPlanner, "_num_proposals", "attr", "planning/planner.py: proposals in the plan report"),
    (EmbeddingModuleShardingPlan, "_serialize", "method", "planning/plan_io.py: plan files in its layout"),
    (_traverse, "set_element", "method", "distributed/safe_dcp.py: SafeLoadPlanner.load_bytes"),
    (DefaultLoadPlanner, "load_bytes", "method", "distributed/safe_dcp.py: SafeLoadPlanner overrides it"),
    (
        DistributedModelParallel,
        "_dmp_wrapped_module",
        "attr",
        "distributed/sharding.py: the dense part DDP wraps (left bare at world size 1)",
    ),
]
LINEAR = ["linear.weight", "linear.bias"]


def _source(cls: type) -> str:
    """The Python source of ``cls`` and its Python base classes (C extension bases have none)."""
    parts = []
    for c in cls.__mro__:
        try:
            parts.append(inspect.getsource(c))
        except (OSError, TypeError):
            continue
    return "".join(parts)


@pytest.mark.parametrize("cls, name, kind, user", CONTRACT, ids=[f"{c.__name__}.{n}" for c, n, _, _ in CONTRACT])
def test_private_api_we_rely_on_still_exists(cls: type, name: str, kind: str, user: str) -> None:
    if kind == "method":
        assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name} is gone; {user} needs it"
    else:
        assert f"self.{name}" in _source(cls) or hasattr(cls, name), f"{cls.__name__}.{name} is gone; {user} needs it"


def test_the_contract_check_sees_a_missing_name() -> None:
    assert "self._no_such_attribute_anywhere" not in _source(ShardedEmbeddingBagCollection)


# -- the behaviour each private name is relied on for (what existence alone does not show) -----


def test_remote_device_placement_moves_to_cpu_by_its_device_field() -> None:
    """staging.host_copy assigns ``placement._device``: device() and str() must follow it."""
    placement = _remote_device("rank:1/cuda:0")
    placement._device = torch.device("cpu")
    assert placement.device() == torch.device("cpu") and placement.rank() == 1 and str(placement) == "rank:1/cpu"


def test_async_save_honours_the_stagers_synchronize_flag() -> None:
    """HostCopyStager copies synchronously in stage(); async_save must not wait on it again."""
    assert HostCopyStager().should_synchronize_after_execute is False
    assert type("Waits", (HostCopyStager,), {"_synchronize_after_execute": True})().should_synchronize_after_execute
    assert "should_synchronize_after_execute" in inspect.getsource(state_dict_saver.async_save)


def test_planner_counts_its_proposals() -> None:
    """planner.py reports ``_num_proposals`` after plan(): an int the search increments."""
    from test_planning import plan_small

    assert EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"))._num_proposals == 0
    proposals = plan_small().proposals
    assert isinstance(proposals, int) and proposals >= 1


def test_module_plan_serializes_in_the_layout_plan_files_use() -> None:
    spec = EnumerableShardingSpec(
        [ShardMetadata([0, 0], [10, 4], "rank:0/cpu"), ShardMetadata([0, 4], [10, 4], "rank:1/cpu")]
    )
    plan = EmbeddingModuleShardingPlan(
        {"t": ParameterSharding(sharding_type="column_wise", compute_kernel="dense", ranks=[0, 1], sharding_spec=spec)}
    )
    assert plan._serialize() == {
        "t": {
            "sharding_type": "column_wise",
            "compute_kernel": "dense",
            "ranks": [0, 1],
            "shards": [
                {"shard_offsets": [0, 0], "shard_sizes": [10, 4], "placement": "rank:0/cpu"},
                {"shard_offsets": [0, 4], "shard_sizes": [10, 4], "placement": "rank:1/cpu"},
            ],
        }
    }


def test_set_element_builds_the_nested_path() -> None:
    root: dict = {"optim": {"lr": 1.0}}
    _traverse.set_element(root, ("optim", "groups", 1, "lr"), 0.5)
    assert root == {"optim": {"lr": 1.0, "groups": [None, {"lr": 0.5}]}}


def test_default_load_bytes_is_what_the_safe_planner_mirrors() -> None:
    """SafeLoadPlanner.load_bytes copies DCP's (only the unpickling differs): same signature,
    same placement of the loaded value."""
    params = list(inspect.signature(DefaultLoadPlanner.load_bytes).parameters)
    assert params == list(inspect.signature(SafeLoadPlanner.load_bytes).parameters) == ["self", "read_item", "value"]
    source = "".join(inspect.getsource(DefaultLoadPlanner.load_bytes).split())
    assert (
        "ifself.flatten_state_dict:set_element(self.original_state_dict,self.mappings[read_item.dest_index.fqn],"
        in source
    )
    assert "self.state_dict[read_item.dest_index.fqn]=torch.load(" in source
    assert SafeLoadPlanner.load_bytes is not DefaultLoadPlanner.load_bytes


def test_ddp_rebuilds_its_buckets_once_and_we_can_do_it_at_construction(tmp_path: Path) -> None:
    """distributed/sharding.py's FixedBucketDataParallelWrapper relies on DDP's reducer taking its
    one rebuild at construction (every parameter pushed as ready, then rebuilt) and then never
    rebuilding again: the bucket layout that bit-identical resume at 3+ ranks needs."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mlet_dist.distributed.sharding import FixedBucketDataParallelWrapper  # noqa: F401 (it exists)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
        ddp = DistributedDataParallel(model, static_graph=False, bucket_cap_mb=25)
        ddp.reducer._push_all_rebuilt_params()
        assert ddp.reducer._rebuild_buckets() is True  # the one rebuild, taken now
        for _ in range(2):
            ddp(torch.randn(3, 4)).sum().backward()
            assert ddp.reducer._rebuild_buckets() is False  # and never again
        logged = ddp._get_ddp_logging_data()
        assert logged["has_rebuilt_buckets"] == 1
        assert logged["rebuilt_per_bucket_param_indices"] == "0 1 2 3"  # parameter order, not ready order
    finally:
        dist.destroy_process_group()


class _NoDataParallel(DataParallelWrapper):
    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        pass


class _TablePlusLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = EmbeddingBagConfig(name="t", num_embeddings=10, embedding_dim=4, feature_names=["f"])
        self.ebc = EmbeddingBagCollection(tables=[config], device=torch.device("meta"))
        self.linear = torch.nn.Linear(4, 1)


def test_dmp_names_state_the_same_with_or_without_ddp(tmp_path: Path) -> None:
    """distributed/sharding.py leaves one process's dense part unwrapped (no DDP) and relies on
    DMP for the rest: the wrapper's wrap() decides alone (DMP wraps nothing itself), and DMP's
    state_dict and named_parameters strip DDP's ``module.`` prefix, so checkpoints and optimizer
    state keys are the same either way and resume across world sizes."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedModelParallel(_TablePlusLinear(), data_parallel_wrapper=DefaultDataParallelWrapper())
        bare = DistributedModelParallel(_TablePlusLinear(), data_parallel_wrapper=_NoDataParallel())
        assert isinstance(wrapped._dmp_wrapped_module, DistributedDataParallel)
        assert isinstance(bare._dmp_wrapped_module, _TablePlusLinear) and bare.module is bare._dmp_wrapped_module
        assert list(wrapped.state_dict()) == list(bare.state_dict())
        assert set(bare.state_dict()) == {"ebc.embedding_bags.t.weight", *LINEAR}
        assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in bare.named_parameters()]
        assert set(LINEAR) <= {n for n, _ in bare.named_parameters()}
    finally:
        dist.destroy_process_group()
