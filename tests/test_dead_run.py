"""The dead-run detector (issue 20): rules on a sequence of val AUCs, and a deliberately dead run
(labels independent of the features) that train.py reports in its console and summary.json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.generate.planted import PlantedSpec, generate_planted
from mlet_dist.sweep.config import from_dict
from mlet_dist.sweep.report import write_report
from mlet_dist.training.dead_run import DeadRunDetector, dead_run_of

ROOT = Path(__file__).resolve().parents[1]


def _feed(det: DeadRunDetector, aucs) -> list:
    return [det.observe(100 * (i + 1), a) for i, a in enumerate(aucs)]


def test_fires_once_after_the_required_points_in_the_band() -> None:
    det = DeadRunDetector(band=0.05, points=3)
    warnings = _feed(det, [0.51, 0.53, 0.54, 0.52])
    assert warnings[:2] == [None, None] and warnings[3] is None  # fires at the 3rd point only
    assert warnings[2] is not None and "dead run" in warnings[2] and "0.5400" in warnings[2]
    v = det.verdict()
    assert v["dead"] and v["first_flagged_step"] == 300 and v["points"] == 4 and not v["recovered"]
    assert v["best_val_auc"] == pytest.approx(0.54)


def test_a_live_run_never_fires_and_a_slow_start_is_recorded_as_recovered() -> None:
    live = DeadRunDetector(band=0.05, points=3)
    assert _feed(live, [0.57, 0.60, 0.62, 0.55]) == [None] * 4  # a later dip does not make it dead
    assert live.verdict()["dead"] is False and live.verdict()["first_flagged_step"] is None
    slow = DeadRunDetector(band=0.05, points=3)
    _feed(slow, [0.52, 0.53, 0.54, 0.61])
    v = slow.verdict()
    assert v["dead"] is False and v["recovered"] and v["first_flagged_step"] == 300


def test_too_few_points_nan_auc_and_band_edges() -> None:
    det = DeadRunDetector(band=0.05, points=3)
    _feed(det, [0.5, float("nan")])
    assert not det.is_dead()  # 2 of 3 points: no verdict yet
    _feed(det, [0.55])  # on the edge: still in the band
    assert det.is_dead()
    edge = DeadRunDetector(band=0.05, points=1)
    _feed(edge, [0.5501])
    assert not edge.is_dead()
    with pytest.raises(ValueError):
        DeadRunDetector(band=0.0)
    with pytest.raises(ValueError):
        DeadRunDetector(points=0)


def test_state_round_trip_keeps_the_history_across_a_resume() -> None:
    det = DeadRunDetector(points=3)
    _feed(det, [0.51, 0.52])
    resumed = DeadRunDetector(points=3)
    resumed.load_state(json.loads(json.dumps(det.state())))
    assert resumed.observe(300, 0.52) is not None and resumed.verdict()["points"] == 3


H = 0.56  # label entropy of the points below: val logloss / val NE


def _feed_losses(det: DeadRunDetector, points) -> list:
    """points: (val AUC, val logloss, train loss since the previous point)."""
    return [
        det.observe(100 * (i + 1), auc, val_logloss=val, val_ne=val / H, train_loss=train)
        for i, (auc, val, train) in enumerate(points)
    ]


def test_a_stuck_run_is_told_by_its_train_loss_at_the_label_entropy() -> None:
    """Issue 20's kind: nothing learnt, on the training rows either; the old hint (init, lr)."""
    det = DeadRunDetector(band=0.05, points=3)
    warnings = _feed_losses(det, [(0.51, 0.561, 0.563), (0.52, 0.560, 0.561), (0.53, 0.561, 0.560)])
    assert warnings[2] is not None and "dead run?" in warnings[2] and "at the label entropy 0.5600" in warnings[2]
    assert "--mlet-init" in warnings[2] and "memoris" not in warnings[2]
    v = det.verdict()
    assert v["dead"] and v["kind"] == "stuck" and not v["memorising"] and v["label_entropy"] == pytest.approx(H)
    learning = DeadRunDetector(band=0.05, points=3)  # train loss well below H: not stuck, not memorising yet
    warnings = _feed_losses(learning, [(0.51, 0.555, 0.550), (0.52, 0.554, 0.530), (0.53, 0.556, 0.520)])
    assert "below the label entropy" in warnings[2] and learning.verdict()["kind"] == "dead"


def test_a_memorising_run_is_told_by_train_loss_falling_while_val_loss_rises() -> None:
    """Issue 28's kind: train loss 0.62 -> 0.52 while val logloss 0.609 -> 0.650, above the constant
    predictor's; the warning names memorisation and a capacity/passes hint, not the init."""
    det = DeadRunDetector(band=0.05, points=3)
    warnings = _feed_losses(det, [(0.53, 0.609, 0.62), (0.54, 0.615, 0.58), (0.53, 0.650, 0.52)])
    assert warnings[:2] == [None, None]
    assert "memorising?" in warnings[2] and "0.6500" in warnings[2] and "--top-mlp" in warnings[2]
    assert "--mlet-init" not in warnings[2]
    v = det.verdict()
    assert v["dead"] and v["kind"] == "memorising" and v["memorising"] and v["first_memorising_step"] == 300
    assert v["first_flagged_step"] == 300  # the dead verdict is not announced a second time
    assert _feed_losses(det, [(0.53, 0.66, 0.50)]) == [None]


def test_memorisation_after_a_good_best_point_is_flagged_and_the_run_stays_alive() -> None:
    """The second pass of a run that peaked in the first: val logloss from 0.545 to 0.617 (> H)
    while the train loss falls; the run is not dead (best 0.61), but it memorises."""
    det = DeadRunDetector(band=0.05, points=3)
    warnings = _feed_losses(det, [(0.59, 0.550, 0.556), (0.61, 0.545, 0.543), (0.57, 0.617, 0.500)])
    assert warnings[2] is not None and "memorising?" in warnings[2] and "best 0.6100 at step 200" in warnings[2]
    v = det.verdict()
    assert not v["dead"] and v["kind"] == "memorising" and v["memorising"]


def test_ordinary_overfitting_below_the_constant_predictors_loss_is_not_memorisation() -> None:
    """Val loss up a little but still under H, or up while the train loss is flat: no flag."""
    below = DeadRunDetector(band=0.05, points=3)
    assert _feed_losses(below, [(0.60, 0.540, 0.55), (0.61, 0.545, 0.53), (0.60, 0.555, 0.50)]) == [None] * 3
    flat = DeadRunDetector(band=0.05, points=3)
    assert _feed_losses(flat, [(0.60, 0.550, 0.55), (0.59, 0.600, 0.545)]) == [None] * 2
    for det in (below, flat):
        assert det.verdict()["kind"] is None and not det.verdict()["memorising"]


def test_losses_survive_a_resume_and_an_old_state_reads_as_unknown() -> None:
    det = DeadRunDetector(points=3)
    _feed_losses(det, [(0.53, 0.609, 0.62), (0.54, 0.615, 0.58)])
    resumed = DeadRunDetector(points=3)
    resumed.load_state(json.loads(json.dumps(det.state())))
    assert "memorising?" in resumed.observe(300, 0.53, val_logloss=0.65, val_ne=0.65 / H, train_loss=0.52)
    old = DeadRunDetector(points=3)
    old.load_state({"aucs": [0.51, 0.52], "steps": [100, 200], "fired_at": None})  # before issue 28
    assert "dead run?" in old.observe(300, 0.52) and old.verdict()["kind"] == "dead"


def test_dead_run_of_reads_summaries() -> None:
    assert dead_run_of({"dead_run": {"dead": True}}) is True
    assert dead_run_of({"dead_run": {"dead": False}}) is False
    assert dead_run_of({}) is None and dead_run_of(None) is None


@pytest.fixture(scope="module")
def random_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labels drawn independently of every feature (planted with no signal and no dense part)."""
    data = tmp_path_factory.mktemp("dead") / "random_labels"
    generate_planted(
        data,
        PlantedSpec(
            rows=24_000, tables=3, cardinality=(50,), rank=2, dense=2, signal=1e-6, dense_signal=0.0, noise=0.0, seed=3
        ),
    )
    return data


def test_sweep_report_marks_dead_runs(random_labels: Path, tmp_path: Path) -> None:
    """The report lists a dead seed and counts it in its configuration's row (not averaged silently)."""
    cfg = from_dict(
        {
            "name": "dead",
            "data": str(random_labels),
            "runs_dir": str(tmp_path / "runs"),
            "report_dir": str(tmp_path / "report"),
            "grid": {"archs": ["dlrm"], "seeds": [0, 1], "baseline": {"d": [4]}, "mlet": {"k": [], "d": []}},
            "report": {"bootstrap_resamples": 0},
        }
    )
    for run, dead in zip(cfg.runs(), (False, True)):
        cfg.run_dir(run).mkdir(parents=True)
        auc = 0.52 if dead else 0.65
        summary = {
            "trained": {s: {"auc": auc, "logloss": 0.5} for s in ("val", "test")},
            "dead_run": DeadRunDetector(points=1).verdict() | {"dead": dead},
        }
        (cfg.run_dir(run) / "summary.json").write_text(json.dumps(summary))
    md = write_report(cfg).read_text()
    assert (
        "**dead runs**" in md
        and "dlrm-baseline-d4-s1" in md
        and "dlrm-baseline-d4-s0" not in md.split("**dead runs**")[1].split("\n")[0]
    )
    assert "| 2/2 (1 dead) |" in md
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["dead_runs"] == ["dlrm-baseline-d4-s1"] and report["table"][0]["seeds_dead"] == 1
    assert [r["dead_run"] for r in report["runs"]] == [False, True]


def test_train_reports_a_deliberately_dead_run(random_labels: Path, tmp_path: Path) -> None:
    """No model can leave val AUC 0.5 on labels independent of the features, so the run must say
    so (console line, summary.json, metrics.jsonl). 1 rank, a few steps."""
    data = random_labels
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "mlet_dist" / "train.py"),
            "--data",
            str(data),
            "--run-dir",
            str(run_dir),
            "--model",
            "mlet",
            "-k",
            "8",
            "-d",
            "4",
            "--batch-size",
            "512",
            "--max-train-batches",
            "6",
            "--eval-every",
            "2",
            "--bottom-mlp",
            "8",
            "--top-mlp",
            "8,1",
            "--no-collapse",
            "--no-progress",
            "--pipeline",
            "none",
            "--backend",
            "gloo",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "warning: dead run?" in proc.stdout
    verdict = json.loads((run_dir / "summary.json").read_text())["dead_run"]
    assert verdict["dead"] is True and verdict["points"] == 3 and verdict["best_val_auc"] <= 0.55
    # the trainer feeds the losses: the train loss stayed at the label entropy, so the kind is "stuck"
    assert verdict["kind"] == "stuck" and verdict["label_entropy"] > 0 and verdict["last_train_loss"] is not None
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "dead_run"] == [6]
