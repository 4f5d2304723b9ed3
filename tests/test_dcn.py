"""DCN-v2 over baseline and MLET collections: shapes, collapse, 2-rank sharded training.

The sharded check (dcn_sharded_training, 2 spawned gloo ranks): DCN-v2 with MLET tables,
table-wise and row-wise, 6 SGD steps, every weight within 1e-5 of one process on the global batch.
"""

import json
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import torch
from torchrec.models.dlrm import DLRMTrain
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet

import equivalence_setup as setup
from dist_launch import ROOT, torchrun
from mlet_dist.distributed.collapse import collapse_model
from mlet_dist.distributed.env import DistEnv
from mlet_dist.distributed.sharded_mlet import ShardedMLETEmbeddingBagCollection
from mlet_dist.distributed.sharding import ShardingConfig, shard_model
from mlet_dist.distributed.state import gather_full_state_dict, load_full_state_dict
from mlet_dist.log_setup import quiet_library_logs
from mlet_dist.models import DCNConfig, DLRMConfig, EmbeddingSpec, build_dcnv2, build_embedding_collection
from mlet_dist.training.optim import OptimConfig, attach_fused_embedding_optimizer, build_optimizer
from multiprocess import run_ranks

DCN = DCNConfig(cross_layers=2, low_rank=4)
SHARDINGS = ("table_wise", "row_wise")


def build_model(device: torch.device, mlet: bool = True, dcn: DCNConfig = DCN) -> torch.nn.Module:
    spec = EmbeddingSpec(embedding_dim=8, inner_dim=32, mlet=mlet)
    collection = build_embedding_collection(setup.TABLE_SIZES, spec, device=device)
    mlps = DLRMConfig(dense_in_features=setup.NUM_DENSE, bottom_mlp=[16], top_mlp=[16, 1])
    return DLRMTrain(build_dcnv2(collection, mlps, dcn, dense_device=device))


def initial_state() -> Dict[str, torch.Tensor]:
    torch.manual_seed(setup.SEED)
    return {k: v.clone() for k, v in build_model(torch.device("cpu")).state_dict().items()}


def reference_run(world_size: int) -> Dict[str, torch.Tensor]:
    model = build_model(torch.device("cpu"))
    model.load_state_dict(initial_state())
    opt = torch.optim.SGD(model.parameters(), lr=setup.LR)
    g = setup.LOCAL_BATCH * world_size
    for step in range(setup.STEPS):
        opt.zero_grad()
        loss, _ = model(setup.batch_for(step, 0, g, g))
        loss.backward()
        opt.step()
    return model.state_dict()


@pytest.mark.parametrize("mlet", [True, False])
@pytest.mark.parametrize("low_rank", [0, 4])
def test_forward_backward_shapes_and_crossnet_kind(mlet: bool, low_rank: int) -> None:
    torch.manual_seed(0)
    model = build_model(torch.device("cpu"), mlet, DCNConfig(cross_layers=2, low_rank=low_rank))
    crossnet = model.model.inter_arch.crossnet
    assert isinstance(crossnet, CrossNet if low_rank == 0 else LowRankCrossNet)
    width = (len(setup.TABLE_SIZES) + 1) * 8
    assert model.model.over_arch.model[0]._mlp[0]._linear.in_features == width
    loss, (_, logits, labels) = model(setup.batch_for(0, 0, 16, 16))
    assert logits.shape == labels.shape == (16,)
    loss.backward()
    assert all(p.grad is not None for p in crossnet.parameters())


def test_meta_build_materialises_the_crossnet_and_counts_like_cpu() -> None:
    meta = build_model(torch.device("meta"))
    cpu = build_model(torch.device("cpu"))
    crossnet = meta.model.inter_arch.crossnet
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in crossnet.parameters())
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in cpu.parameters())


def test_collapsed_dcn_predicts_like_the_trained_one() -> None:
    torch.manual_seed(1)
    model = build_model(torch.device("cpu"))
    batch = setup.batch_for(3, 0, 32, 32)
    with torch.no_grad():
        _, (_, trained, _) = model(batch)
        _, (_, collapsed, _) = collapse_model(model)(batch)
    assert (trained - collapsed).abs().max() <= 1e-5


def dcn_sharded_training(env: DistEnv) -> Optional[Dict[str, Any]]:
    """Each sharding: the MLET DCN-v2 trained 6 SGD steps on this rank's slice; rank 0 returns the
    gathered state, the plan and whether the MLET sharder sharded the tables."""
    quiet_library_logs()
    optim = OptimConfig(embedding_optimizer="sgd", embedding_lr=setup.LR, dense_optimizer="sgd", dense_lr=setup.LR)
    results = {}
    for sharding in SHARDINGS:
        model = build_model(torch.device("meta"))
        attach_fused_embedding_optimizer(model, optim, env.device.type)
        sharded = shard_model(model, env, ShardingConfig(sharding))
        load_full_state_dict(sharded, initial_state())
        optimizer = build_optimizer(sharded, optim)
        for step in range(setup.STEPS):
            optimizer.zero_grad()
            loss, _ = sharded(setup.rank_batch(step, env.rank, env.world_size))
            loss.backward()
            optimizer.step()
        results[sharding] = {
            "state": gather_full_state_dict(sharded),
            "plan": str(sharded.plan),
            "owner_side": any(isinstance(m, ShardedMLETEmbeddingBagCollection) for m in sharded.modules()),
        }
    return results if env.is_main else None


def test_dcn_sharded_two_ranks_match_one_process() -> None:
    result = run_ranks(dcn_sharded_training, world_size=2)[0]
    ref = reference_run(world_size=2)
    init = initial_state()
    for sharding in SHARDINGS:
        state = result[sharding]["state"]
        assert set(state) == set(ref), sharding
        assert sharding in result[sharding]["plan"]
        assert result[sharding]["owner_side"], "MLET tables were not sharded by the MLET sharder"
        for name, r in ref.items():
            diff = (state[name] - r).abs().max().item()
            assert diff <= setup.TOLERANCE, f"{sharding}: {name} differs by {diff}"
    moved = [n for n in ref if (ref[n] - init[n]).abs().max() > 1e-4]
    assert any("crossnet" in n for n in moved) and any(".wide." in n for n in moved)


def test_train_script_arch_dcnv2_two_ranks_collapses(tmp_path: Path) -> None:
    from data_prep.generate.planted import PlantedSpec, generate_planted

    data = tmp_path / "data"
    generate_planted(data, PlantedSpec(rows=4000, tables=3, cardinality=(300,), rank=2, dense=3))
    run_dir = tmp_path / "run"
    torchrun(
        ROOT / "mlet_dist" / "train.py",
        [
            "--data",
            str(data),
            "--run-dir",
            str(run_dir),
            "--arch",
            "dcnv2",
            "--dcn-layers",
            "2",
            "--dcn-low-rank",
            "4",
            "-k",
            "16",
            "-d",
            "4",
            "--sharding",
            "row_wise",
            "--batch-size",
            "64",
            "--max-train-batches",
            "8",
            "--max-eval-batches",
            "2",
            "--no-progress",
            "--bottom-mlp",
            "8",
            "--top-mlp",
            "16,1",
        ],
    )
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["world_size"] == 2 and s["model"] == "mlet" and s["steps"] == 8
    assert s["collapsed_max_abs_prediction_diff"] <= 1e-5
    assert 0.0 <= s["trained"]["test"]["auc"] <= 1.0
    plan = json.loads((run_dir / "plan.json").read_text())
    assert {e["sharding_type"] for e in next(iter(plan["plan"].values())).values()} == {"row_wise"}
