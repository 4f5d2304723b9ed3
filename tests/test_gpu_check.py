"""`make gpu-check`'s CPU side, so it cannot rot between GPU runs: `make gpu-check` with
scripts/gpu_check.py --dry-run
runs every section (env, the cuda tests, which skip here with their reason, and each benchmark at
tiny sizes on gloo) and writes a JSON and a Markdown report that say they are a dry run on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_SECTIONS = ("step", "pipeline", "collapse", "serving")


def test_dry_run_writes_every_section_marked_dry(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        "make",
        "--no-print-directory",
        f"GPU_PYTHON={sys.executable}",
        f"GPU_CHECK_ARGS=--dry-run --out-dir {tmp_path}",
        "gpu-check",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu-dry-run.json", "cpu-dry-run.md"]
    report = json.loads((tmp_path / "cpu-dry-run.json").read_text())
    assert report["dry_run"] is True and report["mode"] == "dry-run/cpu"
    assert report["seconds"] < report["budget_s"]

    env_section = report["env"]
    assert env_section["status"] == "ok", env_section["problems"]
    for package in ("torch", "fbgemm_gpu", "torchrec"):
        assert env_section["packages"][package]["ok"] and env_section["packages"][package]["version"]
    assert set(env_section["project_imports"].values()) == {"ok"}

    tests = report["tests"]
    assert tests["status"] == "skipped" and tests["counts"] == {"skipped": 4}, tests
    assert all("needs a CUDA GPU" in t["reason"] for t in tests["tests"].values())

    bench = report["benchmarks"]["sections"]
    assert report["benchmarks"]["status"] == "ok", report["benchmarks"]
    assert set(bench) == set(BENCH_SECTIONS)
    step = bench["step"]
    assert step["backend"] == "gloo" and step["sharding"] == "table_wise" and step["tables"] == 26
    for per in step["by_batch"].values():
        assert set(per) == {"mlet_k64_d16", "ebc_d16", "ebc_d64"}
        assert all(t["steps_timed"] > 0 and t["median_ms"] > 0 for t in per.values())
        assert per["mlet_k64_d16"]["vs_ebc_d64"] > 0
    pipeline = bench["pipeline"]
    if pipeline["status"] == "ok":  # mlet_dist.training.loop has the sparse-dist pipeline
        assert set(pipeline["by_pipeline"]) == {"none", "sparse-dist"} and pipeline["pipelined_vs_plain"] > 0
    else:
        assert pipeline["status"] == "not available" and pipeline["reason"]
    collapse = bench["collapse"]
    assert collapse["status"] == "ok" and collapse["collapse_read_gbs"] > 0 and collapse["copy_bandwidth_gbs"] > 0
    for per in bench["serving"]["by_batch"].values():
        assert per["int8_vs_fp32_rows_per_s"] > 0
        assert per["int8"]["max_abs_prob_diff_vs_fp32"] < 1e-2

    md = (tmp_path / "cpu-dry-run.md").read_text()
    assert "DRY RUN on CPU" in md
    for heading in ("Step time", "Pipelined vs plain", "Collapse", "Serving"):
        assert f"## {heading}" in md
