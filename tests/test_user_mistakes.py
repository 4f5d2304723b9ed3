"""Natural first mistakes get one clear line, not a traceback (issue 21)."""

import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.criteo import prepare_criteo_kaggle
from data_prep.dataset_format import read_meta
from dist_launch import ROOT
from mlet_dist.planning.spec import SpecError, load_table_spec
from mlet_dist.serving.predict_cli import predict_main
from training_runs import SAMPLE, TRAIN, one_process_env, quick_args, train_one_process

QUICK = quick_args(bottom_mlp="16,16", top_mlp="16,1", max_train_batches=2, max_eval_batches=1)
QUICK += ["--sharding", "table_wise", "--no-collapse"]


def test_raw_file_as_data_names_the_mlet_prep_command(tmp_path: Path) -> None:
    proc = train_one_process(["--data", str(SAMPLE), "--run-dir", str(tmp_path / "r")])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"is a raw data file, not a prepared dataset: run `mlet-prep criteo-kaggle {SAMPLE} OUTDIR`" in proc.stderr
    assert "pass --data OUTDIR" in proc.stderr
    with pytest.raises(ValueError, match="raw data file.*mlet-prep criteo-kaggle"):  # mlet-predict --data
        read_meta(SAMPLE)
    with pytest.raises(SpecError, match=r"--spec .* is a raw data file.*pass --spec OUTDIR"):  # mlet-plan --spec
        load_table_spec(SAMPLE)


def test_predict_refuses_an_output_it_would_not_write_as_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"error: --out .*x\.json: predictions are written as \.parquet"):
        predict_main(
            ["--serving", str(tmp_path / "s"), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "x.json")]
        )
    assert not (tmp_path / "x.json").exists()


def test_forgotten_data_under_torchrun_prints_the_error_once() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(TRAIN)],
        cwd=ROOT,
        env=one_process_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert out.count("the following arguments are required: --data") == 1, out[-3000:]
    assert "usage:" not in out  # the full usage text is what --help is for


def test_reusing_a_run_dir_with_another_model_says_which_is_which(tmp_path: Path) -> None:
    data = tmp_path / "data"
    prepare_criteo_kaggle(SAMPLE, data)
    run_dir = tmp_path / "run"
    first = train_one_process(["--data", str(data), "--run-dir", str(run_dir), "-d", "16", *QUICK])
    assert first.returncode == 0, first.stderr[-3000:]
    second = train_one_process(["--data", str(data), "--run-dir", str(run_dir), "-d", "8", *QUICK])
    assert second.returncode != 0 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert f"run dir {run_dir} holds a checkpoint of another model (--model mlet -d 16 -k 64" in second.stderr
    assert "(--model mlet -d 8 -k 64" in second.stderr and "differs in -d" in second.stderr
    assert "--no-resume" in second.stderr and "another --run-dir" in second.stderr
    third = train_one_process(["--data", str(data), "--run-dir", str(run_dir), "-d", "8", "--no-resume", *QUICK])
    assert third.returncode == 0, third.stderr[-3000:]
