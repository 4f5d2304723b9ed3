"""mlet-prep's steps between its bars (the tail pass, the vocabularies: silent for minutes at
Criteo-Kaggle size, issue 26) say so on stderr when they run long, and never without progress."""

import functools
from pathlib import Path

import pytest

from data_prep.criteo import prepare_criteo_kaggle
from data_prep.parallel import driver
from data_prep.progress import StageLog
from dist_launch import ROOT

SAMPLE = ROOT / "data_prep/samples/criteo_sample.tsv"


def test_prep_announces_its_long_steps_between_the_bars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(driver, "StageLog", functools.partial(StageLog, after_s=0.0))  # every step is "long"
    prepare_criteo_kaggle(SAMPLE, tmp_path / "a", progress=True)
    err = capsys.readouterr().err
    for step in ("2/3 tail (rows past the train split)", "vocabularies"):
        assert f"mlet-prep: {step}: done in " in err, err
    prepare_criteo_kaggle(SAMPLE, tmp_path / "b", progress=False)
    assert "mlet-prep:" not in capsys.readouterr().err


def test_byte_bar_counts_in_si_units(capsys: pytest.CaptureFixture) -> None:
    from data_prep.progress import Progress

    progress = Progress(True, 200_000_000, "count")
    progress.update(16_800_000, 1000)
    shown = str(progress.bar)
    progress.close()
    assert "16.8M/200M" in shown, shown
