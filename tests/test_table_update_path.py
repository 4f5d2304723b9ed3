"""fbgemm's two CPU paths for rowwise Adagrad (issue 29): the JIT kernels that EXACT_ROWWISE_ADAGRAD
takes today, and the plain loop that the counter kernel with neutral settings takes. Both must
train the same weights, and benchmarks/bench_table_update.py, which times them side by side, must
say so when they do not (a fbgemm upgrade that changes either path)."""

import argparse

import pytest

from benchmarks import bench_table_update as bench


def _args(*extra: str) -> argparse.Namespace:
    return bench.parse(["--dims", "16", "--sizes", "3x64", "--rows", "500", "--reps", "3", *extra])


def test_both_rowwise_paths_train_the_same_weights() -> None:
    lines: list = []
    assert bench.run(_args(), emit=lines.append) == []
    header, _, values = lines[1:]
    assert header.split(" | ")[3:5] == ["rowwise_adagrad", "rowwise_adagrad_loop"]
    assert all(float(us) > 0 for us in values.strip("| ").split(" | ")[3:])


def test_the_loop_variant_is_the_counter_kernel_and_moves_the_weights() -> None:
    """The equivalence means something only if the loop variant takes the other path and trains."""
    args = _args()
    tbes = {name: bench.build(name, 3, 16, args.rows) for name in bench.SAME_UPDATE}
    before = tbes["rowwise_adagrad"].weights_host.detach().clone()
    bench.time_variants(tbes, bench.make_batch(3, 64, 16, args), reps=2)
    assert not tbes["rowwise_adagrad"]._used_rowwise_adagrad_with_counter
    assert tbes["rowwise_adagrad_loop"]._used_rowwise_adagrad_with_counter
    assert (tbes["rowwise_adagrad"].weights_host - before).abs().max().item() > 1e-3
    assert bench.rowwise_difference(tbes)[0] <= 1e-6


def test_a_different_update_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    optimizer, extra = bench.VARIANTS["rowwise_adagrad_loop"]
    monkeypatch.setitem(bench.VARIANTS, "rowwise_adagrad_loop", (optimizer, {**extra, "eps": 1e-2}))
    failures = bench.run(_args(), emit=lambda line: None)
    assert len(failures) == 1 and "the two rowwise Adagrad paths differ" in failures[0]


def test_a_bad_size_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--sizes", "26y128"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --sizes: a size is TABLESxBATCH")
