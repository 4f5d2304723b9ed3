"""The linter and the type checker are part of the build (issue 30): `make test` runs `ruff check`
and `mypy` (pyproject's [tool.ruff], [tool.mypy]) before pytest, so an unused import, an undefined
name or a type error fails CI like a failing test. Both are pinned in requirements/common.txt; a venv
without them fails the build, they are never skipped."""

import os
import subprocess
import sys
from pathlib import Path
from typing import List

from dist_launch import ROOT

VENV = Path(sys.executable).parent.parent  # the venv running the tests (not resolved: keep its bin/)
RUFF = VENV / "bin" / "ruff"
MYPY = VENV / "bin" / "mypy"


def _recipe(target: str) -> List[str]:
    """The commands `make <target>` would run, without running them (nor the venv setup)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", f"{VENV}/.setup-done", f"VENV={VENV}", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_make_test_lints_checks_the_format_and_types_before_pytest() -> None:
    recipe = _recipe("test")
    lint = [i for i, line in enumerate(recipe) if line.split()[:2] == [str(RUFF), "check"]]
    layout = [i for i, line in enumerate(recipe) if line.split() == [str(RUFF), "format", "--check"]]
    types = [i for i, line in enumerate(recipe) if line.split() == [str(MYPY)]]
    tests = [i for i, line in enumerate(recipe) if "-m pytest" in line]
    assert lint and layout and types and tests and max(lint[0], layout[0], types[0]) < tests[0], "\n".join(recipe)


def test_the_format_check_catches_an_unformatted_file(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("x = {'a':1}\n")
    proc = subprocess.run(
        [str(RUFF), "format", "--check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(planted)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "would be reformatted" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_the_type_checker_settings_catch_a_type_error_and_a_stale_ignore(tmp_path: Path) -> None:
    """The project's own [tool.mypy] settings, on a planted module: a wrong return type and a
    `# type: ignore` that hides nothing are both errors."""
    assert MYPY.is_file(), f"{MYPY} missing: mypy is pinned in requirements/common.txt (run `make setup`)"
    planted = tmp_path / "planted.py"
    planted.write_text("def f() -> int:\n    return 'text'\n\n\nx: int = 1  # type: ignore\n")
    proc = subprocess.run(
        [str(MYPY), "--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", str(planted)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[return-value]" in proc.stdout and "[unused-ignore]" in proc.stdout, proc.stdout


def test_no_module_is_exempt_from_the_type_checker() -> None:
    """Every module is checked: no ignore_errors override, no module-level skip."""
    import tomllib

    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert not [o for o in mypy.get("overrides", []) if o.get("ignore_errors")], mypy.get("overrides")
    assert not mypy.get("exclude") and mypy["files"] == ["mlet_dist", "data_prep"], mypy


def test_the_lint_settings_catch_unused_and_undefined_names(tmp_path: Path) -> None:
    assert RUFF.is_file(), f"{RUFF} missing: ruff is pinned in requirements/common.txt (run `make setup`)"
    planted = tmp_path / "planted.py"
    planted.write_text("import json\n\n\ndef f() -> int:\n    return undefined_name\n")
    proc = subprocess.run(
        [
            str(RUFF),
            "check",
            "--no-cache",
            "--config",
            str(ROOT / "pyproject.toml"),
            "--output-format",
            "concise",
            str(planted),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "F401" in proc.stdout and "F821" in proc.stdout, proc.stdout
