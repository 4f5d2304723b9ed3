"""Warnings silenced by exact text (mlet_dist/log_setup.NOISE) are the ones the library emits, and
what they warn about is checked not to happen (issue 29 item 5).

Data-parallel tables run fbgemm's dense kernel, whose op ``fbgemm::dense_embedding_codegen_lookup_function``
is registered for the CPU key only; torch's autograd fallback then warns "may lead to silently
incorrect behavior" once per rank although the kernel builds its own backward node. Here: that
backward's gradient equals ``nn.functional.embedding_bag``'s (the 2-rank data-parallel run against
one process is test_sharded_equivalence.py's data_parallel cases), the warning's text matches the
filter, and a 2-rank ``--sharding data_parallel`` mlet-train no longer prints it.
"""

import re
import warnings
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

from dist_launch import ROOT, torchrun
from mlet_dist.log_setup import DENSE_LOOKUP_NO_AUTOGRAD_KEY, NOISE
from test_new_user_edges import tiny_run

ROWS = (11, 7)  # two tables, so the kernel's per-table weight offsets are exercised
DIM = 4
NOT_REGISTERED = "an autograd kernel was not registered"


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])


def _kernel_and_reference_grads(pooling: PoolingMode) -> Tuple[List[Tuple[torch.Tensor, torch.Tensor]], list]:
    """Per table (dense-kernel weight gradient, embedding_bag's), and the warnings the backward raised."""
    g = torch.Generator().manual_seed(0)
    batch = 6
    kernel = DenseTableBatchedEmbeddingBagsCodegen([(r, DIM) for r in ROWS], pooling_mode=pooling, use_cpu=True)
    tables = [w.detach().clone().requires_grad_() for w in kernel.split_embedding_weights()]
    lengths = [torch.randint(0, 4, (batch,), generator=g) for _ in ROWS]  # empty bags occur
    ids = [torch.randint(0, rows, (int(n.sum()),), generator=g) for rows, n in zip(ROWS, lengths)]
    grad_out = torch.randn(batch, DIM * len(ROWS), generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel(torch.cat(ids), _offsets(torch.cat(lengths))).backward(grad_out)
    mode = "sum" if pooling == PoolingMode.SUM else "mean"
    for t, table in enumerate(tables):
        out = torch.nn.functional.embedding_bag(ids[t], table, _offsets(lengths[t])[:-1], mode=mode)
        out.backward(grad_out[:, t * DIM : (t + 1) * DIM])
    kernel_grads = kernel.weights.grad.split([rows * DIM for rows in ROWS])
    grads = [(k.view(rows, DIM), table.grad) for k, rows, table in zip(kernel_grads, ROWS, tables)]
    return grads, caught


@pytest.mark.parametrize("pooling", [PoolingMode.SUM, PoolingMode.MEAN], ids=["sum", "mean"])
def test_dense_kernel_gradient_is_embedding_bags_despite_the_warning(pooling: PoolingMode) -> None:
    """The op the filter names is the one warning, and its backward is right (what the warning doubts)."""
    grads, caught = _kernel_and_reference_grads(pooling)
    for t, (kernel_grad, reference) in enumerate(grads):
        assert reference.abs().sum() > 0, f"table {t} got no gradient: the comparison would be vacuous"
        torch.testing.assert_close(kernel_grad, reference, rtol=1e-6, atol=1e-6)
    texts = [str(w.message) for w in caught if NOT_REGISTERED in str(w.message)]
    assert texts and all(re.match(DENSE_LOOKUP_NO_AUTOGRAD_KEY, text) for text in texts), texts


def test_filter_is_one_exact_message() -> None:
    """Only this op's message: a like warning about another op still reaches the user."""
    pattern = re.compile(DENSE_LOOKUP_NO_AUTOGRAD_KEY)
    assert DENSE_LOOKUP_NO_AUTOGRAD_KEY in NOISE
    assert not pattern.match(f"fbgemm::some_other_op: {NOT_REGISTERED} to the Autograd key(s)")


def test_data_parallel_training_does_not_print_the_warning(tmp_path: Path) -> None:
    """2 ranks, every table data-parallel (dense kernel): the warning was printed once per rank."""
    train, args = tiny_run(tmp_path, tmp_path / "run")
    args[args.index("--sharding") + 1] = "data_parallel"
    proc = torchrun(train, args, nproc=2)
    assert "selected by val AUC" in proc.stdout, proc.stdout
    assert NOT_REGISTERED not in proc.stderr, proc.stderr[-3000:]


def test_export_and_predict_print_no_library_warning(tmp_path: Path) -> None:
    """Issue 31 item 7: mlet-export and mlet-predict on a trained MLET run print no Python warning
    (the TorchScript ones are filtered by text in log_setup.NOISE, with why)."""
    from test_new_user_edges import run_cli

    run_dir = tmp_path / "run"
    train, args = tiny_run(tmp_path, run_dir)
    args.remove("--no-collapse")  # the run writes run/serving
    torchrun(train, args, nproc=1)
    serving, data = run_dir / "serving", tmp_path / "data"
    raw = ROOT / "data_prep" / "samples" / "criteo_sample.tsv"
    commands = [
        ["mlet-export", serving, tmp_path / "artifact"],
        ["mlet-predict", "--serving", serving, "--data", data, "--out", tmp_path / "p.parquet"],
        [
            "mlet-predict",
            "--serving",
            serving,
            "--data",
            data,
            "--out",
            tmp_path / "p8.csv",
            "--precision",
            "int8",
            "--compare",
        ],
        ["mlet-predict", "--serving", serving, "--raw", raw, "--out", tmp_path / "raw.parquet"],
    ]
    for argv in commands:
        proc = run_cli(argv, tmp_path)
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])
        assert "Warning" not in proc.stdout + proc.stderr, (argv[0], proc.stderr[-3000:])
        if argv[0] == "mlet-predict":  # stderr a pipe: no progress bar redraws (as mlet-train, issue 31 item 4)
            assert "rows/s" not in proc.stderr and "\r" not in proc.stderr, proc.stderr[-2000:]
