"""Projection diagnostics on matrices of known rank, on models' state dicts, and predictions I/O."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mlet_dist.models import DLRMConfig, EmbeddingSpec, build_dlrm, build_embedding_collection
from mlet_dist.distributed.collapse import collapse_model
from mlet_dist.training import diagnostics as dg
from mlet_dist.training.evaluation import Predictions


def _low_rank(n: int, m: int, r: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, r, generator=g, dtype=torch.float64) @ torch.randn(r, m, generator=g, dtype=torch.float64)


def test_rank_measures_on_known_spectra() -> None:
    assert dg.effective_rank([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)
    assert dg.effective_rank([3.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert dg.effective_rank([0.0, 0.0]) == 0.0
    p = np.array([2.0, 1.0, 1.0]) / 4
    assert dg.effective_rank([2.0, 1.0, 1.0]) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert dg.stable_rank([2.0, 1.0, 1.0]) == pytest.approx(6 / 4)
    assert dg.rank_above_threshold([1.0, 0.5, 0.009, 0.0]) == 2
    assert dg.rank_above_threshold([1.0, 0.5, 0.009], rel_tol=1e-3) == 3


@pytest.mark.parametrize("n", [300, 200_000])  # exact SVD / chunked Gram path
def test_low_rank_matrix(n: int) -> None:
    a = _low_rank(n, 16, 3)
    s = dg.singular_values(a)
    ref = np.linalg.svd(a.numpy(), compute_uv=False)
    assert len(s) == 16 and np.allclose(s[:3], ref[:3], rtol=1e-8)
    assert s[3:].max() < 1e-6 * s[0]
    summary = dg.spectrum_summary(s)
    assert summary["rank_above_threshold"] == 3 and 1.0 < summary["effective_rank"] <= 3.0 + 1e-6


def test_collapsed_spectrum_without_forming_the_product() -> None:
    t = torch.randn(5000, 32, dtype=torch.float64)
    w = _low_rank(32, 8, 2, seed=1)  # rank-2 projection: the collapsed table has rank 2
    s = dg.collapsed_singular_values(t, w)
    ref = np.linalg.svd((t @ w).numpy(), compute_uv=False)
    assert np.allclose(s[:2], ref[:2], rtol=1e-8) and s[2:].max() < 1e-6 * s[0]
    out = dg.projection_diagnostics(w, wide=t)
    assert out["projection"]["rank_above_threshold"] == 2 and out["table"]["rank_above_threshold"] == 2
    assert out["wide"]["rank_above_threshold"] == 32 and out["rows"] == 5000
    same = dg.projection_diagnostics(w, collapsed=t @ w)
    assert same["table"]["singular_values"][:2] == pytest.approx(out["table"]["singular_values"][:2], rel=1e-8)
    # Row weights: a weight of 0 removes the row from the spectrum.
    w_rows = torch.zeros(5000, dtype=torch.float64)
    w_rows[:10] = 1.0
    weighted = dg.collapsed_singular_values(t, w, row_weights=w_rows)
    assert np.allclose(weighted[:2], np.linalg.svd((t[:10] @ w).numpy(), compute_uv=False)[:2], rtol=1e-8)


def _model(mlet: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = EmbeddingSpec(embedding_dim=4, inner_dim=16, mlet=mlet)
    ebc = build_embedding_collection({"C1": 50, "C2": 70}, spec, device=torch.device("cpu"))
    return build_dlrm(ebc, DLRMConfig(dense_in_features=3, bottom_mlp=[8], top_mlp=[8, 1]))


def test_from_state_dict_mlet_and_baseline() -> None:
    mlet = _model(True)
    out = dg.diagnostics_from_state_dict(mlet.state_dict())
    assert sorted(out["tables"]) == ["t_C1", "t_C2"]
    t1 = out["tables"]["t_C1"]
    assert (t1["rows"], t1["inner_dim"], t1["embedding_dim"]) == (50, 16, 4)
    assert len(t1["projection"]["singular_values"]) == 4 and len(t1["wide"]["singular_values"]) == 16
    assert {"table_effective_rank", "projection_effective_rank", "wide_effective_rank"} <= set(out["mean"])
    # The collapsed model's plain tables have the spectrum computed implicitly above.
    collapsed = dg.diagnostics_from_state_dict(collapse_model(mlet).state_dict())
    assert collapsed["tables"]["t_C1"]["inner_dim"] is None
    assert collapsed["tables"]["t_C1"]["table"]["singular_values"] == pytest.approx(
        t1["table"]["singular_values"], rel=1e-5
    )
    base = dg.diagnostics_from_state_dict(_model(False).state_dict())
    assert set(base["mean"]) == {"table_effective_rank", "table_stable_rank", "table_rank_above_threshold"}
    json.dumps(out)  # summary.json material


def test_predictions_round_trip(tmp_path: Path) -> None:
    preds = {"test": Predictions(torch.tensor([0.1, 0.9, 0.4]), torch.tensor([0.0, 1.0, 1.0]))}
    paths = dg.save_predictions(tmp_path / "predictions", preds)
    back = dg.load_predictions(paths["test"])
    assert back["row"].tolist() == [0, 1, 2] and back["label"].tolist() == [0, 1, 1]
    assert back["prob"] == pytest.approx([0.1, 0.9, 0.4])
