"""Sharded training on 2 (and 4) gloo ranks equals one process on the global batch.

Tolerance: every weight within 1e-5 (max abs, fp32) after 6 SGD steps with a mean loss.
MLET tables are sharded by MLETEmbeddingBagCollectionSharder (projection on the owning rank,
before the output all-to-all); ``--projection-after-comm`` keeps the projections as dense DDP
parameters applied after the communication.
"""

from pathlib import Path
from typing import List

import pytest
import torch

import equivalence_setup as setup
from dist_launch import ROOT, torchrun

WORKER = ROOT / "tests" / "workers" / "sharded_train_worker.py"


def _run(tmp_path: Path, sharding: str, extra: List[str] = [], nproc: int = 2) -> dict:
    out = tmp_path / f"{sharding}.pt"
    torchrun(WORKER, ["--sharding", sharding, "--out", str(out), *extra], nproc=nproc)
    return torch.load(out, weights_only=True)


def _assert_matches_reference(result: dict, world_size: int, mlet: bool = True) -> None:
    ref_state, _ = setup.reference_run(world_size=world_size, mlet=mlet)
    init = setup.initial_state(mlet)
    assert set(result["state"]) == set(ref_state)
    moved = 0
    for name, ref in ref_state.items():
        diff = (result["state"][name] - ref).abs().max().item()
        assert diff <= setup.TOLERANCE, f"{name} differs by {diff}"
        moved += int((ref - init[name]).abs().max() > 1e-4)
    assert moved >= len(ref_state) - 1, "training barely changed the weights: the test would be vacuous"


@pytest.mark.parametrize(
    "sharding", ["table_wise", "row_wise", "table_row_wise", "column_wise", "data_parallel", "mixed"]
)
def test_owner_side_mlet_two_ranks_match_one_process(tmp_path: Path, sharding: str) -> None:
    result = _run(tmp_path, sharding)
    assert result["owner_side"], "MLET tables were not sharded by the MLET sharder"
    kinds = ["table_wise", "row_wise", "column_wise", "data_parallel"] if sharding == "mixed" else [sharding]
    for kind in kinds:
        assert kind in result["plan"]
    _assert_matches_reference(result, world_size=2)


@pytest.mark.parametrize("sharding", ["table_wise", "auto"])
def test_projection_after_comm_two_ranks_match_one_process(tmp_path: Path, sharding: str) -> None:
    result = _run(tmp_path, sharding, ["--projection-after-comm"])
    assert not result["owner_side"]
    _assert_matches_reference(result, world_size=2)


def test_owner_side_mlet_four_ranks_mixed_plan(tmp_path: Path) -> None:
    result = _run(tmp_path, "mixed", nproc=4)
    assert result["owner_side"]
    _assert_matches_reference(result, world_size=4)


def test_baseline_two_ranks_row_wise_match_one_process(tmp_path: Path) -> None:
    result = _run(tmp_path, "row_wise", ["--baseline"])
    _assert_matches_reference(result, world_size=2, mlet=False)


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise"])
def test_owner_side_projection_sends_d_over_k_bytes(tmp_path: Path, sharding: str) -> None:
    owner = _run(tmp_path, sharding, ["--count-bytes"])["bytes_sent"]
    (tmp_path / "after").mkdir()
    after = _run(tmp_path / "after", sharding, ["--count-bytes", "--projection-after-comm"])["bytes_sent"]
    d, k = 8, 64  # equivalence_setup.build_model
    assert after > 0 and owner > 0
    assert owner / after == pytest.approx(d / k, rel=1e-9), (owner, after)
