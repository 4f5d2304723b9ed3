"""The Makefile's user-facing targets (issue 21): `make demo` trains afresh every time, and
`make clean` removes only what the demo made."""

import json
import os
import subprocess
import sys
from pathlib import Path

from dist_launch import ROOT

VENV = Path(sys.executable).parent.parent  # the venv running the tests (not resolved: keep its bin/)
SHORT = "--max-train-batches 2 --max-eval-batches 1 --no-progress --bottom-mlp 16,16 --top-mlp 16,1"


def _make(*args: str) -> subprocess.CompletedProcess:
    # -o: never (re)run the venv setup from a test, whatever changed in requirements/
    cmd = ["make", "--no-print-directory", "-o", f"{VENV}/.setup-done", f"VENV={VENV}", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_demo_run_twice_trains_twice(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    for attempt in (1, 2):
        proc = _make("demo", f"DEMO_DIR={demo}", f"DEMO_ARGS={SHORT}")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-5000:]
        assert "resuming from" not in out, f"make demo #{attempt} resumed a finished run"
        assert "epoch 0: train loss" in out, f"make demo #{attempt} did not train:\n{out[-3000:]}"
        events = [json.loads(line) for line in (demo / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [e["event"] for e in events].count("config") == 1  # one fresh run, not an appended one
        assert f"serving dir: {demo}/run/serving" in out


def test_clean_removes_the_demo_only(tmp_path: Path) -> None:
    demo, mine = tmp_path / "runs" / "demo", tmp_path / "runs" / "mine"
    (demo / "run").mkdir(parents=True)
    mine.mkdir()
    proc = _make("clean", f"DEMO_DIR={demo}")
    assert proc.returncode == 0, proc.stderr
    assert not demo.exists() and mine.is_dir()
