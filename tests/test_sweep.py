"""mlet-sweep: config parsing and grid, rare-item bucketing, and a two-run sweep end to end."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.generate.planted import binary_auc
from mlet_dist.sweep.cli import main as sweep_main
from mlet_dist.sweep.config import load_config
from mlet_dist.sweep.rare_items import bucket_aucs, bucket_labels, example_frequency, train_id_counts
from mlet_dist.sweep.runner import command_for
from mlet_dist.training.diagnostics import load_predictions

TINY_TRAIN_ARGS = [
    "--batch-size",
    "128",
    "--max-train-batches",
    "12",
    "--epochs",
    "1",
    "--bottom-mlp",
    "8",
    "--top-mlp",
    "8,1",
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_default_grid_and_validation(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path / "s.yaml", "data: d\ngrid: {archs: [dlrm, dcnv2]}\n"))
    runs = cfg.runs()
    # per arch and seed: 5 baseline widths + 3 x 3 MLET (k >= d always holds for the defaults)
    assert len(runs) == 2 * 3 * (5 + 9)
    assert runs[0].run_id == "dlrm-baseline-d4-s0" and "dcnv2-mlet-k128-d16-s2" in {r.run_id for r in runs}
    assert cfg.launch.parallel_runs >= 1 and cfg.runs_dir == Path("runs/sweeps/sweep")
    js = load_config(
        _write(
            tmp_path / "s.json",
            json.dumps(
                {
                    "data": "d",
                    "grid": {"seeds": [5], "baseline": {"d": [8]}, "mlet": {"k": [4, 16], "d": [8]}},
                    "launch": {"world_size": 2, "threads_per_rank": 1, "cpu_budget": 5},
                }
            ),
        )
    )
    assert [r.run_id for r in js.runs()] == ["dlrm-baseline-d8-s5", "dlrm-mlet-k16-d8-s5"]  # k=4 < d skipped
    assert js.launch.parallel_runs == 2
    assert cfg.equivalence_margin == 0.003  # the default "matches" margin (AUC)
    wider = load_config(_write(tmp_path / "m.yaml", "data: d\nreport: {equivalence_margin: 0.01}\n"))
    assert wider.equivalence_margin == 0.01
    tuned = load_config(_write(tmp_path / "t.yaml", "data: d\nmodel_args: {baseline: [--embedding-lr, 0.3]}\n"))
    base_cmd, mlet_cmd = (command_for(tuned, r) for r in (tuned.runs()[0], tuned.runs()[-1]))
    assert "--embedding-lr" in base_cmd and base_cmd[base_cmd.index("--embedding-lr") + 1] == "0.3"
    assert "--embedding-lr" not in mlet_cmd
    for bad, message in [
        ("data: d\nmodel_args: {wide: [--x]}\n", "model_args has unknown models"),
        ("data: d\nmodel_args: {mlet: [--seed, '3']}\n", "may not set"),
        ("data: d\nreport: {bootstrap_resamples: -1}\n", "bootstrap_resamples"),
        ("data: d\nreport: {equivalence_margin: 0}\n", "equivalence_margin"),
        ("data: d\ntrain_args: [--seed, '1']\n", "may not set"),
        ("data: d\ngrid: {archs: [xx]}\n", "grid.archs"),
        ("data: d\nextra: 1\n", "unknown sweep config keys"),
        ("grid: {}\n", "needs `data`"),
        ("data: d\nreport: {rare_items: {edges: [4, 2]}}\n", "increasing"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_config(_write(tmp_path / "bad.yaml", bad))


def test_bucketing() -> None:
    assert bucket_labels([1, 4, 16]) == ["0 (unseen)", "1–3", "4–15", "≥16"]
    assert bucket_labels([2, 3]) == ["0–1", "2", "≥3"]
    freq = np.array([0, 0, 2, 3, 5, 20, 20, 20])
    probs = np.array([0.1, 0.9, 0.2, 0.8, 0.5, 0.3, 0.7, 0.6])
    labels = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    b = bucket_aucs(freq, probs, labels, [1, 4, 16], min_rows=2)
    assert [x.rows for x in b] == [2, 2, 1, 3] and [x.positives for x in b] == [1, 1, 1, 2]
    assert b[0].auc == 1.0 and b[1].auc == 0.0 and np.isnan(b[2].auc) and b[3].auc == 1.0


def test_sweep_end_to_end_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = {
        "name": "e2e",
        "data": str(tmp_path / "data"),
        "runs_dir": str(tmp_path / "runs"),
        "report_dir": str(tmp_path / "report"),
        "prepare": {"planted": {"rows": 6000, "tables": 3, "cardinality": 300, "rank": 2, "dense": 2, "seed": 1}},
        "grid": {"archs": ["dlrm"], "seeds": [0], "baseline": {"d": [4]}, "mlet": {"k": [8], "d": [4]}},
        "launch": {"world_size": 1, "threads_per_rank": 1, "cpu_budget": 2},
        "train_args": TINY_TRAIN_ARGS,
        "report": {"rare_items": {"edges": [1, 8, 64], "min_rows": 20}, "bootstrap_resamples": 50},
    }
    path = _write(tmp_path / "sweep.json", json.dumps(config))
    assert sweep_main(["--config", str(path)]) == 0
    runs = tmp_path / "runs"
    for run_id in ("dlrm-baseline-d4-s0", "dlrm-mlet-k8-d4-s0"):
        summary = json.loads((runs / run_id / "summary.json").read_text())
        preds = load_predictions(runs / run_id / "predictions" / "test.npz")
        assert len(preds["row"]) == summary["trained"]["test"]["rows"]
        assert binary_auc(preds["prob"], preds["label"]) == pytest.approx(summary["trained"]["test"]["auc"], abs=1e-5)
        diag = summary["diagnostics"]
        assert set(diag["tables"]) == {"t_C1", "t_C2", "t_C3"}
        assert not (runs / run_id / "checkpoints").exists() and not (runs / run_id / "best_model").exists()

    report = tmp_path / "report"
    png = (report / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (report / "rare_items.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = list(csv.DictReader(open(report / "table.csv")))
    assert [(r["model"], r["d"], r["k"]) for r in table] == [("baseline", "4", ""), ("mlet", "4", "8")]
    for r in table:
        assert 0.0 < float(r["test_auc_mean"]) <= 1.0 and r["seeds_finished"] == "1"
        assert int(r["params_serving"]) > 0 and float(r["test_gap_closed"]) < 1.5
    mlet = table[1]
    assert int(mlet["params_training"]) > int(mlet["params_serving"]) == int(table[0]["params_serving"])
    assert len(list(csv.DictReader(open(report / "results.csv")))) == 2
    rare = list(csv.DictReader(open(report / "rare_items.csv")))
    assert {r["config"] for r in rare} == {"baseline d=4", "MLET k=8 d=4"} and len(rare) == 2 * 4
    test_rows = json.loads((tmp_path / "data" / "meta.json").read_text())["splits"]["test"]["rows"]
    assert sum(int(r["rows"]) for r in rare if r["model"] == "baseline") == test_rows
    md = (report / "report.md").read_text()
    assert "| dlrm | baseline | 4 | – |" in md and "| dlrm | mlet | 4 | 8 |" in md
    assert "Bayes-optimal AUC" in md and "## Rare items" in md and "## Projection diagnostics" in md
    assert "## Headline: MLET d vs baseline d'" in md and "| MLET d | k | seeds | test AUC | vs d'=4 |" in md
    (headline,) = list(csv.DictReader(open(report / "headline.csv")))
    assert (headline["mlet_d"], headline["mlet_k"], headline["baseline_d"]) == ("4", "8", "4")
    assert float(headline["mlet_test_auc"]) == pytest.approx(float(mlet["test_auc_mean"]), abs=1e-5)
    # one seed a side: no seed spread, so no interval and no verdict either way
    assert headline["diff_low"] == headline["diff_high"] == "" and headline["diff_verdict"] == "inconclusive"
    assert headline["diff_resamples"] == "50" and float(headline["diff_row_std"]) > 0
    assert "(< 2 seeds: no interval)" in md
    spectra = json.loads((report / "report.json").read_text())["spectra_during_training"]
    assert spectra and {(r["k"], r["d"]) for r in spectra} == {(8, 4)}  # MLET runs only, one point per eval
    assert all(1.0 <= r["effective_rank_mean"] <= 4.0 for r in spectra)
    assert (report / "spectra.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "spectra.png" in md
    assert json.loads((report / "report.json").read_text())["missing_runs"] == []

    # Frequencies used by the report = train counts of the ids, min over the features.
    counts = train_id_counts(tmp_path / "data")
    freq = example_frequency(tmp_path / "data", "test", counts, 5)
    assert freq.shape == (5,) and (freq >= 0).all()

    # Resumable: everything is done, nothing is launched again.
    capsys.readouterr()
    assert sweep_main(["--config", str(path), "--no-report"]) == 0
    assert "2 already done, 0 to run" in capsys.readouterr().out
    manifest = json.loads((runs / "sweep.json").read_text())
    assert {r["status"] for r in manifest["runs"]} == {"done"}


def test_failed_run_is_reported_and_does_not_stop_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from data_prep.generate.planted import PlantedSpec, generate_planted
    from mlet_dist.sweep import runner

    generate_planted(tmp_path / "data", PlantedSpec(rows=800, tables=2, cardinality=(20,), rank=1, dense=1))
    path = _write(
        tmp_path / "sweep.yaml",
        f"""
data: {tmp_path / "data"}
runs_dir: {tmp_path / "runs"}
report_dir: {tmp_path / "report"}
grid: {{seeds: [0], baseline: {{d: [4]}}, mlet: {{k: [], d: []}}}}
train_args: [--batch-size, "0"]
""",
    )
    assert sweep_main(["--config", str(path), "--dry-run"]) == 0
    assert "mlet_dist/train.py" in capsys.readouterr().out and not (tmp_path / "runs").exists()
    # The launch itself is covered above; here a stand-in job fails the way train.py would.
    monkeypatch.setattr(
        runner,
        "command_for",
        lambda cfg, run: [
            sys.executable,
            "-c",
            "import sys; print('error: --batch-size (per rank) must be >= 1'); sys.exit(1)",
        ],
    )
    assert sweep_main(["--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "failed: dlrm-baseline-d4-s0" in err
    assert (
        "--batch-size (per rank) must be >= 1" in (tmp_path / "runs" / "dlrm-baseline-d4-s0" / "launch.log").read_text()
    )
    manifest = json.loads((tmp_path / "runs" / "sweep.json").read_text())
    assert manifest["runs"][0]["status"] == "failed" and manifest["runs"][0]["returncode"] == 1
    assert "missing/failed: dlrm-baseline-d4-s0" in (tmp_path / "report" / "report.md").read_text()
