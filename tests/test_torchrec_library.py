"""mlet_dist as a library a TorchRec user depends on (issue 31 item 2): the public names, MLET
tables from EmbeddingBagConfigs, and torchrec.models.dlrm.DLRM trained under
DistributedModelParallel on 2 gloo ranks with ``sharders()``, and warned about without them."""

from pathlib import Path

import pytest
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from dist_launch import ROOT
from multiprocess import run_ranks
from torchrec_dlrm_training import train_torchrec_dlrm


def test_public_names_and_a_collection_from_embedding_bag_configs() -> None:
    from mlet_dist import MLETEmbeddingBagCollection, MLETEmbeddingBagCollectionSharder, mlet_collection, sharders

    tables = [
        EmbeddingBagConfig(
            name="a", num_embeddings=10, embedding_dim=4, feature_names=["fa", "fb"], pooling=PoolingType.MEAN
        ),
        EmbeddingBagConfig(name="b", num_embeddings=7, embedding_dim=4, feature_names=["fc"]),
    ]
    ebc = mlet_collection(tables, inner_dim={"a": 16, "b": 8})
    assert isinstance(ebc, MLETEmbeddingBagCollection)
    assert [(t.name, t.inner_dim, t.embedding_dim, t.feature_names, t.pooling) for t in ebc.mlet_configs()] == [
        ("a", 16, 4, ["fa", "fb"], PoolingType.MEAN),
        ("b", 8, 4, ["fc"], PoolingType.SUM),
    ]
    assert [(c.name, c.num_embeddings, c.embedding_dim) for c in ebc.embedding_bag_configs()] == [
        ("a", 10, 4),
        ("b", 7, 4),
    ]  # the d-wide view a model built for the stock EBC reads
    assert isinstance(sharders()[0], MLETEmbeddingBagCollectionSharder)
    assert not any(isinstance(s, MLETEmbeddingBagCollectionSharder) for s in sharders(owner_projection=False))
    with pytest.raises(ValueError, match="weight_init_min/max"):
        mlet_collection(
            [
                EmbeddingBagConfig(
                    name="c",
                    num_embeddings=5,
                    embedding_dim=4,
                    feature_names=["fc"],
                    weight_init_min=-0.1,
                    weight_init_max=0.1,
                )
            ],
            inner_dim=8,
        )


@pytest.mark.parametrize("which", ["mlet", "torchrec"])
def test_torchrec_dlrm_trains_under_dmp_on_two_ranks(which: str) -> None:
    """With sharders(): the MLET collection is sharded by ours (projection on the owner) and the
    model learns (40 steps: mean loss of the last 5 < 0.2 from 0.69). With TorchRec's defaults:
    the same model trains, and one MLETShardingWarning names mlet_dist.sharders()."""
    result = run_ranks(train_torchrec_dlrm, world_size=2, args=(which,))[0]
    losses = result["losses"]
    assert sum(losses[:5]) / 5 > 0.6 and sum(losses[-5:]) / 5 < 0.2, losses
    if which == "mlet":
        assert result["collection"] == "ShardedMLETEmbeddingBagCollection" and result["mlet_warnings"] == []
    else:
        assert result["collection"] == "MLETEmbeddingBagCollection"  # DMP sharded only its inner `wide`
        assert len(result["mlet_warnings"]) == 1 and "sharders=mlet_dist.sharders()" in result["mlet_warnings"][0]


BLOCK_TORCHREC = """
import sys
class NoTorchrec:  # as if torchrec were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "torchrec" or name.startswith("torchrec."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorchrec())
"""


@pytest.mark.parametrize("how", ["import", "cli"])
def test_a_missing_torchrec_is_one_line_naming_the_install(how: str, tmp_path: Path) -> None:
    """`import mlet_dist` raises an ImportError whose message is the install line; a CLI (argv[0]
    mlet-*) prints it as one error line and exits 2 (was: ModuleNotFoundError traceback)."""
    import subprocess
    import sys

    code = BLOCK_TORCHREC + (
        "import mlet_dist"
        if how == "import"
        else "sys.argv = ['mlet-train', '--help']\nfrom mlet_dist.train import main\nmain()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    wanted = "mlet_dist needs torch, fbgemm-gpu (or fbgemm-gpu-cpu) and torchrec: install with"
    last = proc.stderr.strip().splitlines()[-1]
    assert "pip install --no-deps torchrec==1.8.0" in last and "(ModuleNotFoundError: torchrec)" in last, last
    if how == "import":
        assert proc.returncode == 1 and last.startswith(f"ImportError: {wanted}"), proc.stderr[-2000:]
    else:
        assert proc.returncode == 2 and proc.stderr.strip() == f"error: {last[len('error: ') :]}", proc.stderr[-2000:]
        assert last.startswith(f"error: {wanted}") and "Traceback" not in proc.stderr
