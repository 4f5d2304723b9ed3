"""--epochs 2 after a finished 1-epoch run (issue 31 item 9): the summary counts the evaluation
points of the whole run, not only this process's (was "among 1 point(s)" for 2 epoch ends)."""

from pathlib import Path

from dist_launch import torchrun
from test_new_user_edges import tiny_run


def test_extending_a_run_counts_every_evaluation_point(tmp_path: Path) -> None:
    train, args = tiny_run(tmp_path, tmp_path / "run")
    first = torchrun(train, args, nproc=1)
    assert "among 1 evaluation point(s)" in first.stdout, first.stdout
    longer = torchrun(train, [*args, "--epochs", "2"], nproc=1)
    assert "resuming from" in longer.stdout and "run already complete" not in longer.stdout
    assert "among 2 evaluation point(s)" in longer.stdout, longer.stdout
