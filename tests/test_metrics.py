"""The one metrics module (data_prep/metrics.py): its AUC is torchmetrics' BinaryAUROC (ties
count one half), the weighted AUC is the AUC of rows repeated by their integer weights, logloss
and accuracy are torch's / torchmetrics', and no other module computes them again."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from data_prep.metrics import (
    WeightedAUC,
    accuracy,
    binary_auc,
    binary_metrics,
    calibration,
    expected_auc,
    log_loss,
    normalized_entropy,
)
from mlet_dist.training.evaluation import Predictions

ROOT = Path(__file__).resolve().parents[1]


def _torchmetrics_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    metric = BinaryAUROC()  # thresholds=None: the exact curve over every distinct score
    metric.update(torch.from_numpy(np.asarray(scores, np.float64)), torch.from_numpy(np.asarray(labels)).long())
    return float(metric.compute())


def _scored(seed: int, n: int, decimals: int) -> tuple:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    scores = rng.random(n) + 0.5 * labels
    return (np.round(scores, decimals) if decimals else scores), labels


@pytest.mark.parametrize("decimals", [0, 1, 2])  # 0: no rounding (few ties); 1: ~15 distinct scores
def test_auc_equals_torchmetrics_binary_auroc_with_ties(decimals: int) -> None:
    for seed in range(3):
        scores, labels = _scored(seed, 3000, decimals)
        if decimals:
            assert len(np.unique(scores)) < len(scores) / 10  # the case is really about ties
        # torchmetrics builds its ROC curve in float32, hence 1e-6, not bit equality
        assert binary_auc(scores, labels) == pytest.approx(_torchmetrics_auc(scores, labels), abs=1e-6)


def test_auc_is_the_exact_pair_count() -> None:
    """Against every positive-negative pair counted (ties one half): equal to the last bit."""
    scores, labels = _scored(9, 400, 1)
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert binary_auc(scores, labels) == float(wins) / (len(pos) * len(neg))


def test_auc_of_a_single_tie_group_is_one_half() -> None:
    labels = np.array([0, 1, 0, 1, 1])
    assert binary_auc(np.full(5, 0.3), labels) == 0.5 == pytest.approx(_torchmetrics_auc(np.full(5, 0.3), labels))
    assert binary_auc(np.array([0.1, 0.2, 0.2, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(0.875)  # 3.5 / 4


def test_integer_weights_equal_repeated_rows_exactly() -> None:
    rng = np.random.default_rng(5)
    scores, labels = _scored(5, 800, 1)
    weights = rng.poisson(1.2, 800)
    repeated = np.repeat(np.arange(800), weights)
    expected = binary_auc(scores[repeated], labels[repeated])
    assert binary_auc(scores, labels, weights.astype(np.float64)) == expected  # exact: integer sums in float64
    assert expected == pytest.approx(_torchmetrics_auc(scores[repeated], labels[repeated]), abs=1e-6)
    scorer = WeightedAUC(scores, labels)  # one sort, many weight vectors (the paired bootstrap)
    assert scorer(weights.astype(np.float64)) == expected and scorer(None) == scorer(np.ones(800))


def test_one_class_or_no_weight_on_a_class_is_nan() -> None:
    assert np.isnan(binary_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert np.isnan(binary_auc(np.zeros(0), np.zeros(0)))
    assert np.isnan(binary_auc(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 1]), np.array([0.0, 1.0, 2.0])))
    with pytest.raises(ValueError, match="differ in length"):
        binary_auc(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="differ in length"):
        WeightedAUC(np.zeros(3), np.zeros(3))(np.ones(2))


def test_expected_auc_with_certain_labels_is_the_auc() -> None:
    """Soft labels that are 0 or 1 are the labels: the expectation is the AUC itself."""
    scores, labels = _scored(2, 1000, 2)
    assert expected_auc(scores, labels.astype(np.float64)) == pytest.approx(binary_auc(scores, labels), abs=1e-12)


def test_logloss_is_torch_binary_cross_entropy_including_certain_mistakes() -> None:
    rng = np.random.default_rng(3)
    probs = np.concatenate([rng.random(500), [0.0, 1.0, 0.0, 1.0]])  # wrong certainties cost 100, not inf
    labels = np.concatenate([(rng.random(500) < 0.4), [1, 0, 0, 1]]).astype(np.float64)
    ref = float(F.binary_cross_entropy(torch.from_numpy(probs), torch.from_numpy(labels)))
    assert log_loss(probs, labels) == pytest.approx(ref, rel=1e-12)
    assert log_loss(np.array([0.0]), np.array([1.0])) == 100.0
    assert np.isnan(log_loss(np.zeros(0), np.zeros(0)))


def test_accuracy_is_torchmetrics_binary_accuracy_at_the_threshold() -> None:
    rng = np.random.default_rng(4)
    probs = np.concatenate([rng.random(999), [0.5]]).astype(np.float32)  # 0.5 is predicted negative
    labels = (rng.random(1000) < 0.5).astype(np.int64)
    labels[-1] = 1
    metric = BinaryAccuracy()
    metric.update(torch.from_numpy(probs), torch.from_numpy(labels))
    assert accuracy(probs, labels) == pytest.approx(float(metric.compute()), abs=1e-6)
    assert accuracy(np.array([0.5]), np.array([1])) == 0.0


def test_ne_and_calibration_of_the_base_rate_predictor() -> None:
    labels = np.array([1, 0, 0, 0])
    base_rate = np.full(4, 0.25)
    assert normalized_entropy(log_loss(base_rate, labels), 0.25) == pytest.approx(1.0)
    assert calibration(base_rate, labels) == pytest.approx(1.0)
    assert np.isnan(normalized_entropy(0.3, 0.0)) and np.isnan(calibration(base_rate, np.zeros(4)))


def test_training_metrics_match_the_torch_implementation_they_replaced() -> None:
    """Predictions.metrics() goes through binary_metrics; against torchmetrics / torch BCE on
    float32 probabilities (what training produces), with ties from float32 rounding."""
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(20000, generator=gen) < 0.25).float()
    probs = torch.sigmoid(torch.randn(20000, generator=gen) + labels).float()
    m = Predictions(probs, labels).metrics()
    assert m == binary_metrics(probs.numpy(), labels.numpy()) and m["rows"] == 20000
    assert m["auc"] == pytest.approx(_torchmetrics_auc(probs.numpy(), labels.numpy().astype(np.int64)), abs=1e-6)
    assert m["logloss"] == pytest.approx(float(F.binary_cross_entropy(probs.double(), labels.double())), rel=1e-12)
    with pytest.raises(ValueError, match="no rows"):
        Predictions(torch.empty(0), torch.empty(0)).metrics()


_SCORERS = {
    "binary_auc": lambda s, y: binary_auc(s, y),
    "WeightedAUC": lambda s, y: WeightedAUC(s, y)(),
    "expected_auc": lambda s, y: expected_auc(s, y.astype(np.float64)),
    "log_loss": log_loss,
    "accuracy": accuracy,
    "calibration": calibration,
    "binary_metrics": binary_metrics,
    "Predictions.metrics": lambda s, y: Predictions(torch.from_numpy(s), torch.from_numpy(y)).metrics(),
}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", sorted(_SCORERS))
def test_non_finite_scores_are_refused_with_their_count(name: str, bad: float) -> None:
    """A NaN sorts above every score: AUC ranked it as the most confident prediction, without
    an error. Every metric taking scores refuses them, naming how many."""
    scores = np.array([0.1, bad, 0.4, bad, 0.2, 0.6])
    labels = np.array([0, 1, 0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"^2 of 6 (scores|probabilities) are not finite \(nan or inf\)"):
        _SCORERS[name](scores, labels)
    _SCORERS[name](np.nan_to_num(scores, nan=0.5, posinf=0.5, neginf=0.5), labels)  # finite: scored


def test_metrics_module_imports_only_numpy_and_the_standard_library() -> None:
    tree = ast.parse((ROOT / "data_prep" / "metrics.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= {"math", "typing", "numpy"}, names
    code = "import sys, data_prep.metrics; assert 'torch' not in sys.modules and 'mlet_dist' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# A second metrics implementation: a metric library imported, or a function / class named like one
# of the module's metrics defined, anywhere but data_prep/metrics.py.
_METRIC_LIBRARIES = ("torchmetrics", "sklearn", "torcheval", "torchrec.metrics")
_METRIC_NAMES = {
    "auc",
    "binary_auc",
    "auroc",
    "binary_auroc",
    "roc_auc",
    "weightedauc",
    "weighted_auc",
    "expected_auc",
    "log_loss",
    "logloss",
    "accuracy",
    "binary_accuracy",
    "normalized_entropy",
    "calibration",
    "mann_whitney",
    "binary_metrics",
}


def _second_implementations(path: Path) -> list:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.lower() in _METRIC_NAMES:
            found.append(f"{path}:{node.lineno}: defines {node.name}")
        modules = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        )
        found += [f"{path}:{node.lineno}: imports {m}" for m in modules if m.startswith(_METRIC_LIBRARIES)]
    return found


def test_no_other_module_computes_a_metric(tmp_path: Path) -> None:
    found = [
        hit
        for package in ("mlet_dist", "data_prep")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "data_prep" / "metrics.py"
        for hit in _second_implementations(path)
    ]
    assert not found, "metrics belong in data_prep/metrics.py:\n" + "\n".join(found)
    planted = tmp_path / "evaluation.py"  # the checker itself sees what this module replaced
    planted.write_text(
        "from torchmetrics.functional.classification import binary_auroc\n\nclass WeightedAUC:\n    pass\n"
    )
    assert [h.split(": ", 1)[1] for h in _second_implementations(planted)] == [
        "imports torchmetrics.functional.classification",
        "defines WeightedAUC",
    ]
