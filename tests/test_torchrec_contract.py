"""The private parts of TorchRec and torch our sharded modules rely on, named in one place: a
TorchRec or torch upgrade that renames one fails here, with the name and the module that needs
it, before any training run can go wrong.

Found by reading the installed sources (torchrec 1.8.0, torch 2.13): instance attributes are
checked in the class source (they are set in __init__, which needs a process group), methods
and class attributes with hasattr.
"""

import inspect

import pytest
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.embedding_lookup import GroupedPooledEmbeddingsLookup
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

# (class, name, kind, who relies on it)
CONTRACT = [
    (ShardedEmbeddingBagCollection, "_embedding_shardings", "attr", "distributed/sharded_mlet.py: d-wide output dists"),
    (ShardedEmbeddingBagCollection, "_lookups", "attr",
     "distributed/sharded_mlet.py: the MLET module runs the injected sharder's lookups, then projects"),
    (GroupedPooledEmbeddingsLookup, "grouped_configs", "attr",
     "distributed/sharded_mlet.py: where each table sits in a lookup's output"),
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
    (ShardedTensor, "_init_from_local_shards_and_global_metadata", "method",
     "distributed/sharded_collapse.py, distributed/staging.py"),
    (ShardedTensor, "_process_group", "attr", "distributed/staging.py"),
    (TrainPipelineSparseDist, "_pipelined_modules", "attr", "training/loop.py: reports what the pipeline overlaps"),
    (TrainPipelineSparseDist, "detach", "method", "training/loop.py: ends a segment before evaluation"),
]


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
