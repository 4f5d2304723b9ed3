"""mlet_dist/train.py end to end on the real Criteo sample: torchrun and torchx, 2 gloo ranks."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dist_launch import torchrun, torchx_run
from training_runs import TRAIN, data_and_run_dir, prepared_sample, quick_args, train_one_process

QUICK = quick_args(bottom_mlp="32,16", top_mlp="32,1", max_train_batches=6, max_eval_batches=3)


@pytest.fixture(scope="module")
def criteo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_sample(tmp_path_factory, "data")


def _torchrun_quick(data: Path, run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    """train.py on 2 ranks: ``flags``, then the QUICK ones."""
    return torchrun(TRAIN, data_and_run_dir(data, run_dir, *flags, *QUICK))


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_torchrun_two_ranks_trains_collapses_and_reports(criteo_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _torchrun_quick(criteo_dir, run_dir, "--sharding", "table_wise", "--epochs", "2")
    s = _summary(run_dir)
    assert s["world_size"] == 2 and s["backend"] == "gloo" and s["model"] == "mlet"
    assert s["selected_by"] == "val auc" and s["selected_epoch"] in (0, 1)
    assert s["collapsed_max_abs_prediction_diff"] <= 1e-5
    for split in ("val", "test"):
        assert s["trained"][split]["rows"] == 3 * 64  # --max-eval-batches 3 x --batch-size 64, any world size
        assert abs(s["collapsed"][split]["auc"] - s["trained"][split]["auc"]) <= 1e-4
    assert s["params_serving"] < s["params_training"]
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert 0.0 <= epochs[0]["val"]["auc"] <= 1.0 and epochs[0]["test"]["logloss"] > 0
    best = max(epochs, key=lambda e: e["val"]["auc"])
    assert s["trained"]["test"]["auc"] == pytest.approx(best["test"]["auc"], abs=1e-9)


def test_eval_every_selects_the_best_point_inside_the_epoch(criteo_dir: Path, tmp_path: Path) -> None:
    """One epoch, evaluated every 2 steps: the selected model is the point with the best val AUC,
    and it is the one restored (the collapsed model is evaluated after the restore)."""
    run_dir = tmp_path / "run"
    _torchrun_quick(
        criteo_dir, run_dir, "--sharding", "row_wise", "--eval-every", "2", "--embedding-lr", "0.5", "--diagnostics"
    )
    s = _summary(run_dir)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points = [e for e in events if e["event"] in ("eval", "epoch")]
    assert [(e["event"], e["step"]) for e in points] == [("eval", 2), ("eval", 4), ("epoch", 6)]
    best = max(points, key=lambda e: e["val"]["auc"])  # first of equals, as the keeper does
    assert s["selected_step"] == best["step"] and s["selected_epoch"] == 0 and s["evaluations"] == 3
    assert [e["best"] for e in points].count(True) >= 1
    assert s["trained"]["val"]["auc"] == pytest.approx(best["val"]["auc"], abs=1e-9)
    assert s["collapsed"]["val"]["auc"] == pytest.approx(best["val"]["auc"], abs=1e-4)
    if best["step"] != 6:
        assert (run_dir / "best_model" / f"step-{best['step']}" / ".metadata").is_file()
    # --diagnostics: the spectra of every projection W (k=64 x d=16) at every evaluation point
    spectra = [e for e in events if e["event"] == "spectra"]
    assert [e["step"] for e in spectra] == [2, 4, 6]
    for e in spectra:
        assert len(e["effective_rank"]) == 26 and all(1.0 < r <= 16.0 for r in e["effective_rank"].values())
        assert all(len(sv) == 16 for sv in e["singular_values"].values())
    # the end-of-run diagnostics describe the selected (restored) point's W
    at_selected = next(e for e in spectra if e["step"] == s["selected_step"])
    final = s["diagnostics"]["tables"]["t_C1"]["projection"]["effective_rank"]
    assert at_selected["effective_rank"]["t_C1"] == pytest.approx(final, rel=1e-6)


def test_early_stopping_ends_training_after_patience_points_without_gain(criteo_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _torchrun_quick(
        criteo_dir,
        run_dir,
        "--sharding",
        "table_wise",
        "--epochs",
        "3",
        "--eval-every",
        "2",
        "--early-stop-patience",
        "1",
        "--embedding-lr",
        "0.5",
    )
    s = _summary(run_dir)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points = [e for e in events if e["event"] in ("eval", "epoch")]
    best_auc, expected_stop = -1.0, None  # replay the rule on the logged points: first non-improvement
    for e in points:
        if e["val"]["auc"] > best_auc:
            best_auc = e["val"]["auc"]
        else:
            expected_stop = e["step"]
            break
    stops = [e for e in events if e["event"] == "early_stop"]
    if expected_stop is None or expected_stop == 18:  # improved at every point, or only at the very end
        assert not stops and s["stopped_early_at_step"] is None and s["steps"] == 18
    else:
        assert points[-1]["step"] == expected_stop and [e["step"] for e in stops] == [expected_stop]
        assert s["stopped_early_at_step"] == expected_stop == s["steps"]
    assert s["selected_step"] == max(points, key=lambda e: e["val"]["auc"])["step"]
    assert s["collapsed"]["val"]["auc"] == pytest.approx(best_auc, abs=1e-4)  # the best point was restored


def test_baseline_flag_trains_stock_ebc_without_collapse(criteo_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _torchrun_quick(criteo_dir, run_dir, "--model", "baseline", "--sharding", "row_wise")
    s = _summary(run_dir)
    assert s["model"] == "baseline" and "collapsed" not in s
    assert s["params_serving"] == s["params_training"]


def test_torchx_local_cwd_two_ranks(criteo_dir: Path, tmp_path: Path) -> None:
    torchx = shutil.which("torchx", path=str(Path(sys.executable).parent))
    assert torchx, "torchx is installed in the venv"
    run_dir = tmp_path / "run"
    component = ["dist.ddp", "-j", "1x2", "--script", "mlet_dist/train.py"]
    args = data_and_run_dir(criteo_dir, run_dir, "--sharding", "column_wise", *QUICK)
    proc = torchx_run(component, args, env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "SUCCEEDED" in proc.stdout + proc.stderr
    assert _summary(run_dir)["world_size"] == 2


def test_missing_data_is_a_clear_message(tmp_path: Path) -> None:
    proc = train_one_process(["--data", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "r")])
    assert proc.returncode != 0
    assert "no prepared dataset" in proc.stderr and "mlet-prep criteo-kaggle" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nccl_without_cuda_says_what_to_change(criteo_dir: Path, tmp_path: Path) -> None:
    proc = train_one_process(["--data", str(criteo_dir), "--run-dir", str(tmp_path / "r"), "--backend", "nccl"])
    assert proc.returncode != 0
    assert "--backend nccl needs CUDA" in proc.stderr and "--backend gloo" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_k_smaller_than_d_fails_before_training(criteo_dir: Path, tmp_path: Path) -> None:
    proc = train_one_process(["--data", str(criteo_dir), "--run-dir", str(tmp_path / "r"), "-k", "8", "-d", "16"])
    assert proc.returncode != 0
    assert "--inner-dim k=8 is smaller than --embedding-dim d=16" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_single_process_without_launcher(criteo_dir: Path, tmp_path: Path) -> None:
    proc = train_one_process(["--data", str(criteo_dir), "--run-dir", str(tmp_path / "r"), *QUICK])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _summary(tmp_path / "r")["world_size"] == 1


def test_plan_file_round_trip_and_mismatch(criteo_dir: Path, tmp_path: Path) -> None:
    """A run's plan.json drives a second run; the same plan on 1 rank is refused with a message."""
    first = tmp_path / "first"
    _torchrun_quick(criteo_dir, first, "--sharding", "row_wise")
    plan = json.loads((first / "plan.json").read_text())
    assert plan["topology"]["world_size"] == 2
    tables = next(iter(plan["plan"].values()))
    assert {e["sharding_type"] for e in tables.values()} == {"row_wise"}
    second = tmp_path / "second"
    _torchrun_quick(criteo_dir, second, "--plan", str(first / "plan.json"))
    assert json.loads((second / "plan.json").read_text())["plan"] == plan["plan"]
    proc = train_one_process(
        ["--data", str(criteo_dir), "--run-dir", str(tmp_path / "r"), "--plan", str(first / "plan.json"), *QUICK]
    )
    assert proc.returncode != 0
    assert "was made for world size 2" in proc.stderr and "this job has 1 rank:" in proc.stderr
    assert "Traceback" not in proc.stderr
