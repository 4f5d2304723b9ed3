"""mlet-train --projection-after-comm shards MLET collections as plain EBCs on purpose
(sharding.shard_model marks them): no MLETShardingWarning there (issue 31 item 2)."""

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from multiprocess import run_ranks
from torchrec_dlrm_training import train_torchrec_dlrm


def test_projection_after_comm_is_marked_on_purpose() -> None:
    """mlet-train --projection-after-comm shards MLET collections as plain EBCs on purpose: no warning."""
    from mlet_dist import mlet_collection
    from mlet_dist.distributed.sharding import ShardingConfig, mark_projection_after_comm

    ebc = mlet_collection([EmbeddingBagConfig(name="a", num_embeddings=5, embedding_dim=4, feature_names=["f"])], 8)
    model = torch.nn.Sequential(ebc)
    mark_projection_after_comm(model, ShardingConfig(owner_projection=False))
    assert ebc.projection_after_comm
    mark_projection_after_comm(model, ShardingConfig(owner_projection=True))
    assert not ebc.projection_after_comm


def test_shard_model_after_comm_trains_without_the_warning() -> None:
    result = run_ranks(train_torchrec_dlrm, world_size=2, args=("after-comm",))[0]
    assert result["collection"] == "MLETEmbeddingBagCollection" and result["mlet_warnings"] == []
    assert sum(result["losses"][-5:]) / 5 < 0.2, result["losses"]
