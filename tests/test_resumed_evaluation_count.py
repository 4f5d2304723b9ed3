"""--epochs 2 after a finished 1-epoch run (issue 31 item 9): the summary counts the evaluation
points of the whole run, not only this process's (was "among 1 point(s)" for 2 epoch ends)."""

from pathlib import Path

from dist_launch import ROOT, torchrun
from test_new_user_edges import TINY


def test_extending_a_run_counts_every_evaluation_point(tmp_path: Path) -> None:
    from data_prep.criteo_kaggle import prepare_criteo_kaggle

    data, run_dir = tmp_path / "data", tmp_path / "run"
    prepare_criteo_kaggle(ROOT / "data_prep" / "samples" / "criteo_sample.tsv", data)
    train = ROOT / "mlet_dist" / "train.py"
    args = ["--data", str(data), "--run-dir", str(run_dir), *TINY]
    first = torchrun(train, args, nproc=1)
    assert "among 1 evaluation point(s)" in first.stdout, first.stdout
    longer = torchrun(train, [*args, "--epochs", "2"], nproc=1)
    assert "resuming from" in longer.stdout and "run already complete" not in longer.stdout
    assert "among 2 evaluation point(s)" in longer.stdout, longer.stdout
