"""benchmarks/scale_rehearsal.py at a CI-sized fraction: every stage reports (issue 26)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prep", "plan", "train", "checkpoint", "collapse", "export")


def test_tiny_fraction_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "report"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scale_rehearsal.py"), "--fraction", "0.0002", "--steps", "2",
           "--batch-size", "32", "--models", "mlet_k64_d16", "--precisions", "fp32", "--latency-calls", "5",
           "--latency-batches", "1", "64", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
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
    assert train["full_tables"]["samples_per_s"] > 0 and train["small_tables"]["samples_per_s"] > 0
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    for row in report["ranks"]:  # every rank: the plan's bytes beside its measured peak
        assert row["planned_bytes"] > 0 and row["peak_rss_bytes"] > row["planned_bytes"], row
    ck = report["checkpoint"]
    assert ck["bytes"] > 0 and all(ck[m]["seconds"] > 0 for m in ("sync_save", "async_save", "resume_load"))
    assert report["collapse"]["copy_gb_per_s"] > 0
    fp32 = report["export"]["precisions"]["fp32"]
    assert fp32["module_bytes"] > 0 and set(fp32["latency_ms"]) == {"1", "64"}
    readme = (out / "README.md").read_text()
    assert "| rank | planned GB" in readme and "| checkpoint" in readme
    assert not (tmp_path / "work").exists()  # the work dir is removed unless --keep
