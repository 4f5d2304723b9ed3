"""The linter is part of the build (issue 30): `make test` runs `ruff check` (pyproject's [tool.ruff])
before pytest, so an unused import or an undefined name fails CI like a failing test. ruff is pinned
in requirements/common.txt; a venv without it fails the build, it is never skipped."""

import os
import subprocess
import sys
from pathlib import Path
from typing import List

from dist_launch import ROOT

VENV = Path(sys.executable).parent.parent  # the venv running the tests (not resolved: keep its bin/)
RUFF = VENV / "bin" / "ruff"


def _recipe(target: str) -> List[str]:
    """The commands `make <target>` would run, without running them (nor the venv setup)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", "-o", f"{VENV}/.setup-done", f"VENV={VENV}", target],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_make_test_lints_before_pytest() -> None:
    recipe = _recipe("test")
    lint = [i for i, line in enumerate(recipe) if line.split()[:2] == [str(RUFF), "check"]]
    tests = [i for i, line in enumerate(recipe) if "-m pytest" in line]
    assert lint and tests and lint[0] < tests[0], "\n".join(recipe)


def test_the_lint_settings_catch_unused_and_undefined_names(tmp_path: Path) -> None:
    assert RUFF.is_file(), f"{RUFF} missing: ruff is pinned in requirements/common.txt (run `make setup`)"
    planted = tmp_path / "planted.py"
    planted.write_text("import json\n\n\ndef f() -> int:\n    return undefined_name\n")
    proc = subprocess.run([str(RUFF), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                           "--output-format", "concise", str(planted)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "F401" in proc.stdout and "F821" in proc.stdout, proc.stdout
