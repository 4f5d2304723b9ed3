"""benchmarks/scale_rehearsal.py at a CI-sized fraction: every stage reports (issue 26)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale_rehearsal  # noqa: E402

STAGES = ("prep", "plan", "train", "checkpoint", "collapse", "export", "epoch", "ranks")
REFERENCE = "train.mlet_k64_d16.full_tables"


def test_only_ci_takes_shortcuts() -> None:
    """Without --ci the rehearsal makes every run; --ci names each run it does not make (the CI test
    below checks that kaggle.json reports each one in its place)."""
    assert scale_rehearsal.ci_shortcuts(scale_rehearsal.parse_args([])) == {}
    shortcuts = scale_rehearsal.ci_shortcuts(scale_rehearsal.parse_args(["--ci"]))
    assert set(shortcuts) == {"small_tables", "epoch", "kill9_uninterrupted"}, shortcuts


def test_tiny_fraction_reports_every_stage(tmp_path: Path) -> None:
    """--ci at a tiny fraction (< 2 min on a quiet 2-core box): every stage reports, and what --ci
    does not run is reported as skipped or as reused from the one MLET run, never left out."""
    out = tmp_path / "report"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "scale_rehearsal.py"),
        "--ci",
        "--fraction",
        "0.0002",
        "--steps",
        "2",
        "--batch-size",
        "32",
        "--models",
        "mlet_k64_d16",
        "--precisions",
        "fp32",
        "--latency-calls",
        "5",
        "--latency-batches",
        "1",
        "64",
        "--kill-every",
        "2",
        "--kill-after-gb",
        "0",
        "--workdir",
        str(tmp_path / "work"),
        "--out",
        str(out),
    ]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # shared boxes: 7x
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "kaggle.json").read_text())
    assert report["rows"] == round(45_840_617 * 0.0002) and len(report["table_sizes"]) == 26
    assert report["table_rows_total"] == sum(report["table_sizes"])
    for stage in STAGES:
        assert report[stage], stage
    for stage in (report["prep"]["criteo_kaggle"], report["checkpoint"], report["collapse"], report["export"]):
        assert stage["seconds"] > 0 and stage["peak_rss_bytes"] > 100e6, stage
    assert report["prep"]["criteo_kaggle"]["vocabulary_total"] > 0
    train = report["train"]["mlet_k64_d16"]
    assert train["full_tables"]["samples_per_s"] > 0 and train["full_tables"]["steps"] == 6
    assert train["small_tables"] == {
        "skipped": scale_rehearsal.ci_shortcuts(scale_rehearsal.parse_args(["--ci"]))["small_tables"]
    }, train["small_tables"]
    assert any("small tables" in line and "--ci" in line for line in report["not_run"]), report["not_run"]
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    for row in report["ranks"]:  # every rank: the plan's bytes beside its measured peak
        assert abs(row["measured_over_planned"] - 1) < 0.15, row  # the bound; here mostly process overhead
    ck = report["checkpoint"]
    assert ck["bytes"] > 0 and all(ck[m]["seconds"] > 0 for m in ("sync_save", "async_save", "resume_load"))
    kill = ck["kill9"]  # the resume after a kill -9 mid-save equals the uninterrupted run
    assert kill["killed_during_save"] and kill["torn_dir_left"] and kill["torn_dir_removed_by_resume"], kill
    assert kill["resumed_from_step"] == 2 and kill["steps_compared"] == 6 and kill["matches_uninterrupted"], kill
    assert kill["uninterrupted_run"] == REFERENCE, kill
    assert report["collapse"]["copy_gb_per_s"] > 0
    epoch = report["epoch"]
    assert epoch["reused_from"] == REFERENCE and epoch["steps"] == 6, epoch
    assert 0 < epoch["fraction_of_epoch"] < 1 and epoch["epoch_seconds_extrapolated"] > 0
    assert 0 < epoch["val"]["auc"] < 1 and epoch["test"]["ne"] > 0 and epoch["eval_rows"]["val"] == 2 * 32
    fp32 = report["export"]["precisions"]["fp32"]
    assert fp32["module_bytes"] > 0 and set(fp32["latency_ms"]) == {"1", "64"}
    readme = (out / "README.md").read_text()
    assert "| rank (training stage) | planned GB" in readme and "| checkpoint" in readme and "| kill -9" in readme
    assert "| epoch MLET" in readme and "skipped (--ci)" in readme
    assert not (tmp_path / "work").exists()  # the work dir is removed unless --keep

    # --epoch-only --epoch-steps 0: a whole epoch over all the rows replaces the extrapolated one
    whole = [*cmd, "--epoch-only", "--epoch-steps", "0", "--epoch-eval-batches", "2"]
    proc = subprocess.run(whole, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = json.loads((out / "kaggle.json").read_text())
    epoch = after["epoch"]
    train_rows = report["rows"] * 6 // 7
    assert epoch["fraction_of_epoch"] == 1 and epoch["rows_trained"] >= train_rows - 64, epoch
    assert "reused_from" not in epoch and epoch["eval_rows"]["val"] == 2 * 32, epoch
    assert [r["rank"] for r in epoch["ranks"]] == [0, 1], epoch  # the whole run against its plan
    for row in epoch["ranks"]:
        assert row["peak_rss_bytes"] == epoch["rank_peak_rss_bytes"][str(row["rank"])]
        assert abs(row["measured_over_planned"] - 1) < 0.15, row
    assert "| rank (epoch stage) | planned GB" in (out / "README.md").read_text()
    assert not any(line.startswith("the whole epoch") for line in after["not_run"]), after["not_run"]
    replaced = ("epoch", "not_run", "collapse", "export")
    assert {k: v for k, v in after.items() if k not in replaced} == {
        k: v for k, v in report.items() if k not in replaced
    }  # every other stage as the full run left it
    for stage in ("collapse", "export"):  # of the model the whole epoch trained
        assert after[stage]["model"] == "the epoch stage's" and after[stage]["seconds"] > 0, after[stage]
    assert (
        "(100.0%" in (out / "README.md").read_text()
        and "| collapse (the epoch stage's model) |" in (out / "README.md").read_text()
    )


def test_synthetic_default_tables_say_what_they_cost(tmp_path: Path, capsys) -> None:
    """Issue 26 item 2: `mlet-prep synthetic` without --table-sizes builds Kaggle-size tables; it says
    so, with the model size, in one warning line (a few --rows otherwise hide 8.6 GB of tables)."""
    from data_prep.cli import main as prep_main

    assert prep_main(["synthetic", str(tmp_path / "a.tsv"), "--format", "criteo-tsv", "--rows", "10"]) == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("mlet-prep: warning:")]
    assert len(warnings) == 1 and "33,762,577 rows" in warnings[0] and "8.6 GB" in warnings[0], warnings
    assert (
        prep_main(
            ["synthetic", str(tmp_path / "b.tsv"), "--format", "criteo-tsv", "--rows", "10", "--table-sizes", "100"]
        )
        == 0
    )
    assert "warning" not in capsys.readouterr().err
