"""Parallel prep (issue 17): worker processes over byte ranges write the same bytes as one process.

Every comparison is of all output files byte for byte (parquet parts, meta.json, rejects.tsv,
vocab/): ids, splits, rejects with file and line, and meta.json are equal, not merely similar.
"""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path
from typing import Dict, List

import pytest

from data_prep import prepare_avazu, prepare_criteo_kaggle, prepare_criteo_terabyte, textio
from data_prep.parallel.engine import WorkerFailed
from data_prep.parallel import driver
from data_prep.parallel import tasks as parallel_tasks
from data_prep.parallel.ranges import count_lines, iter_range_blocks, plan_ranges
from data_prep.generate.synthetic import write_criteo_tsv

REPO = Path(__file__).resolve().parents[1]
CRITEO = REPO / "data_prep" / "samples" / "criteo_sample.tsv"
AVAZU = REPO / "data_prep" / "samples" / "avazu_sample.csv"
SMALL = dict(block_bytes=1 << 16, rows_per_file=3000, row_group_rows=700)  # many ranges and part files


def all_bytes(out: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def assert_same(a: Path, b: Path) -> None:
    x, y = all_bytes(a), all_bytes(b)
    assert sorted(x) == sorted(y)
    differ = [k for k in x if x[k] != y[k]]
    assert not differ, f"files differ: {differ}"


def damage(lines: List[bytes], seed: int) -> List[bytes]:
    """Malformed lines of every kind, CRLF endings, and no final newline."""
    rng = random.Random(seed)
    out = list(lines)
    bad = [b"", b"1\t2", b"2" + lines[0][1:], lines[0].replace(b"\t", b"\tx", 1), b"\r", lines[1] + b"\tmore"]
    for b in bad * 3:
        out.insert(rng.randrange(len(out)), b)
    for i in rng.sample(range(len(out)), 20):
        out[i] = out[i] + b"\r"
    return out


@pytest.fixture(scope="module")
def damaged_kaggle(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("k") / "train.txt"
    lines = damage(CRITEO.read_bytes().split(b"\n")[:-1], 1)
    src.write_bytes(b"\n".join(lines))  # no final newline
    return src


@pytest.fixture(scope="module")
def terabyte_days(tmp_path_factory) -> Path:
    days = tmp_path_factory.mktemp("tb")
    for d in range(4):
        name = days / (f"day_{d}.gz" if d == 2 else f"day_{d}")
        write_criteo_tsv(name, rows=2500 + 300 * d, table_sizes=[2000] * 26, seed=d)
        if d == 1:  # malformed lines in a plain day
            name.write_bytes(b"\n".join(damage(name.read_bytes().split(b"\n")[:-1], 2)) + b"\n")
    return days


def test_ranges_reproduce_the_single_process_blocks(tmp_path: Path) -> None:
    rng = random.Random(0)
    p = tmp_path / "x"
    for trial in range(30):
        lines = [
            b"x" * (rng.choice([0, 70_000]) if rng.random() < 0.05 else rng.randint(0, 300))
            for _ in range(rng.randint(0, 3000))
        ]
        p.write_bytes(b"\n".join(lines) + (b"\n" if trial % 2 else b""))
        block = rng.choice([1, 4096, 65_536, 100_003, 150_000])
        ref = [(b.offset, b.first_line, b.num_lines, b.ends.tobytes()) for b in textio.iter_line_blocks(p, block)]
        for target in (1, 70_000, 300_000):
            got, line = [], 1
            for r in plan_ranges([p], block, target):
                got += [
                    (b.offset, b.first_line, b.num_lines, b.ends.tobytes()) for b in iter_range_blocks(r, block, line)
                ]
                line += count_lines(r)
            assert got == ref, (trial, block, target)


@pytest.mark.parametrize("workers", [2, 3])
def test_kaggle_sample_same_bytes(tmp_path: Path, workers: int) -> None:
    one = prepare_criteo_kaggle(CRITEO, tmp_path / "one", **SMALL)
    many = prepare_criteo_kaggle(CRITEO, tmp_path / "many", workers=workers, **SMALL)
    assert many.meta == one.meta
    assert_same(tmp_path / "one", tmp_path / "many")


def test_kaggle_default_layout_same_bytes(tmp_path: Path) -> None:
    prepare_criteo_kaggle(CRITEO, tmp_path / "one", block_bytes=1 << 16)
    prepare_criteo_kaggle(CRITEO, tmp_path / "two", block_bytes=1 << 16, workers=2)
    assert_same(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("workers", [2, 3])
def test_kaggle_malformed_same_rejects_and_bytes(tmp_path: Path, damaged_kaggle: Path, workers: int) -> None:
    one = prepare_criteo_kaggle(damaged_kaggle, tmp_path / "one", min_count=2, **SMALL)
    assert one.rows_rejected >= 18
    prepare_criteo_kaggle(damaged_kaggle, tmp_path / "many", min_count=2, workers=workers, **SMALL)
    assert_same(tmp_path / "one", tmp_path / "many")


def test_strict_names_the_same_first_line(tmp_path: Path, damaged_kaggle: Path) -> None:
    msgs = []
    for w in (1, 3):
        with pytest.raises(ValueError) as e:
            prepare_criteo_kaggle(damaged_kaggle, tmp_path / f"s{w}", strict=True, workers=w, **SMALL)
        msgs.append(str(e.value))
        assert not (tmp_path / f"s{w}").exists()
    assert msgs[0] == msgs[1] and "train.txt:" in msgs[0]


@pytest.mark.parametrize("workers", [2, 3])
def test_terabyte_multi_file_same_bytes(tmp_path: Path, terabyte_days: Path, workers: int) -> None:
    one = prepare_criteo_terabyte([terabyte_days], tmp_path / "one", **SMALL)
    assert one.rows_rejected > 0 and len(one.meta["sources"]) == 4
    prepare_criteo_terabyte([terabyte_days], tmp_path / "many", workers=workers, **SMALL)
    assert_same(tmp_path / "one", tmp_path / "many")


def test_memory_cap_hashes_the_same_features(tmp_path: Path) -> None:
    days = tmp_path / "days"
    for d in range(3):
        write_criteo_tsv(days / f"day_{d}", rows=6000, table_sizes=[1_000_000] * 3 + [50] * 23, exponent=0.5, seed=d)
    kw = dict(count_memory_mb=0.5, hash_size=1000, block_bytes=1 << 16)
    one = prepare_criteo_terabyte([days], tmp_path / "one", **kw)
    assert any("count_memory_mb" in v for v in one.meta["hashed_features"].values())
    prepare_criteo_terabyte([days], tmp_path / "two", workers=2, **kw)
    assert_same(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("workers", [2, 3])
def test_avazu_same_bytes(tmp_path: Path, workers: int) -> None:
    lines = AVAZU.read_bytes().split(b"\n")[:-1]
    src = tmp_path / "train.csv"
    src.write_bytes(b"\n".join(lines[:1] + damage(lines[1:], 3)) + b"\n")
    one = prepare_avazu(src, tmp_path / "one", block_bytes=1 << 16, rows_per_file=2000, row_group_rows=300)
    assert one.rows_rejected >= 12
    prepare_avazu(src, tmp_path / "many", block_bytes=1 << 16, rows_per_file=2000, row_group_rows=300, workers=workers)
    assert_same(tmp_path / "one", tmp_path / "many")


def test_truncated_gzip_same_reject(tmp_path: Path) -> None:
    data = gzip.compress(CRITEO.read_bytes())
    src = tmp_path / "t.gz"
    src.write_bytes(data[: len(data) * 2 // 3])
    prepare_criteo_kaggle(src, tmp_path / "one", **SMALL)
    prepare_criteo_kaggle(src, tmp_path / "two", workers=2, **SMALL)
    assert_same(tmp_path / "one", tmp_path / "two")


def crashing_count_range(ctx, rng, *args):
    """A worker that dies on the second range of its file (as killed by the OOM killer)."""
    if rng.start > 0:
        os._exit(7)
    return parallel_tasks.count_range(ctx, rng, *args)


def test_dead_worker_fails_naming_the_file_and_publishes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(driver.tasks, "count_range", crashing_count_range)
    out = tmp_path / "out"
    with pytest.raises(WorkerFailed, match=r"criteo_sample\.tsv \(bytes \d+-\d+\)"):
        prepare_criteo_kaggle(CRITEO, out, workers=2, **SMALL)
    assert not out.exists() and not list(tmp_path.glob("out.*"))
    monkeypatch.undo()
    prepare_criteo_kaggle(CRITEO, out, workers=2, **SMALL)  # a rerun succeeds
    prepare_criteo_kaggle(CRITEO, tmp_path / "one", **SMALL)
    assert_same(out, tmp_path / "one")


def test_one_worker_runs_the_range_tasks_in_this_process(tmp_path: Path, monkeypatch) -> None:
    """One driver: PrepConfig()'s one worker runs the same range tasks as --workers N, on threads of
    the calling process (no process pool), and writes what two worker processes write."""
    from data_prep.parallel import engine

    ran_in: List[int] = []
    count_range = parallel_tasks.count_range

    def recording_count_range(ctx, rng, *args):
        ran_in.append(os.getpid())
        return count_range(ctx, rng, *args)

    def no_pool(self, workers: int) -> None:
        raise AssertionError("one worker started a process pool")

    monkeypatch.setattr(driver.tasks, "count_range", recording_count_range)
    monkeypatch.setattr(engine.LocalEngine, "__init__", no_pool)
    prepare_criteo_kaggle(CRITEO, tmp_path / "one", **SMALL)
    assert len(ran_in) > 1 and set(ran_in) == {os.getpid()}
    monkeypatch.undo()
    prepare_criteo_kaggle(CRITEO, tmp_path / "two", workers=2, **SMALL)
    assert_same(tmp_path / "one", tmp_path / "two")


def test_forkserver_preloads_modules_that_exist() -> None:
    """multiprocessing skips a preload name that does not import, silently: a module moved without
    its name updated here would only make every worker slower to start."""
    import importlib

    from data_prep.parallel.engine import FORKSERVER_PRELOAD

    for name in FORKSERVER_PRELOAD:
        importlib.import_module(name)


def test_cli_workers_flag(tmp_path: Path) -> None:
    from data_prep.cli import main

    assert main(["criteo-kaggle", str(CRITEO), str(tmp_path / "a"), "--workers", "1", "--no-progress"]) == 0
    assert main(["criteo-kaggle", str(CRITEO), str(tmp_path / "b"), "--workers", "2", "--no-progress"]) == 0
    assert_same(tmp_path / "a", tmp_path / "b")


def _dask_or_skip() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        pytest.skip(
            "dask distributed is not installed (the optional 'dask' extra; requirements/common.txt installs it)"
        )


def test_dask_local_cluster_same_bytes_every_kind(tmp_path: Path, damaged_kaggle: Path, terabyte_days: Path) -> None:
    """The engine path on a local cluster writes what one process writes: Kaggle, Terabyte days,
    Avazu, all with malformed rows."""
    _dask_or_skip()
    kw = dict(SMALL, workers=2, engine="dask")
    prepare_criteo_kaggle(damaged_kaggle, tmp_path / "k1", **SMALL)
    prepare_criteo_kaggle(damaged_kaggle, tmp_path / "kd", **kw)
    assert_same(tmp_path / "k1", tmp_path / "kd")
    prepare_criteo_terabyte([terabyte_days], tmp_path / "t1", **SMALL)
    prepare_criteo_terabyte([terabyte_days], tmp_path / "td", **kw)
    assert_same(tmp_path / "t1", tmp_path / "td")
    lines = AVAZU.read_bytes().split(b"\n")[:-1]
    src = tmp_path / "train.csv"
    src.write_bytes(b"\n".join(lines[:1] + damage(lines[1:], 4)) + b"\n")
    prepare_avazu(src, tmp_path / "a1", **SMALL)
    prepare_avazu(src, tmp_path / "ad", **kw)
    assert_same(tmp_path / "a1", tmp_path / "ad")


def test_worker_vocab_cache_sees_a_new_run_at_the_same_path(tmp_path: Path) -> None:
    """A long-lived (dask) worker caches each feature's lookup table; a later run whose staging
    directory reuses the path (same output, same pid) must not be encoded with the old table."""
    import numpy as np

    from data_prep.criteo import criteo_spec
    from data_prep.dataset_format import DATASET_CRITEO_KAGGLE
    from data_prep.spec import PrepConfig
    from data_prep.splits import ChunkSplit
    from data_prep.vocab_build import KeyTable

    keys = np.array([3, 5, 7], np.int64)
    table = tmp_path / "C1.npy"
    ctx = parallel_tasks.TaskContext(
        criteo_spec(DATASET_CRITEO_KAGGLE),
        PrepConfig(),
        ChunkSplit(),
        str(tmp_path),
        {"C1": (4, False)},
        {"C1": str(table)},
    )
    KeyTable(keys, np.array([1, 2, 3], np.int64)).save(table)
    assert parallel_tasks._vocab(ctx, "C1").encode(keys).tolist() == [1, 2, 3]
    table.unlink()
    KeyTable(keys, np.array([3, 2, 1], np.int64)).save(table)  # the next run's vocabulary, same path
    assert parallel_tasks._vocab(ctx, "C1").encode(keys).tolist() == [3, 2, 1]


def test_a_pool_broken_before_the_next_submission_names_the_task_whose_worker_died() -> None:
    """Under load a worker's death can break the pool before the merge submits its next task;
    that submission raised BrokenProcessPool past the merge (CI saw it) instead of WorkerFailed."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from data_prep.parallel import engine as engines

    class BrokenAfterTwo(engines.Engine):
        def __init__(self) -> None:
            self.submitted = 0

        def submit(self, fn, *args):
            self.submitted += 1
            if self.submitted > 2:
                raise BrokenProcessPool("A child process terminated abruptly")
            future: Future = Future()
            if self.submitted == 2:
                future.set_exception(BrokenProcessPool("A child process terminated abruptly"))
            else:
                future.set_result(self.submitted)
            return future

    tasks = [(f"day_0.tsv (bytes {i}-{i + 1})", lambda: ()) for i in range(4)]
    results = engines.ordered(BrokenAfterTwo(), lambda: None, tasks, window=4)
    with pytest.raises(WorkerFailed, match=r"day_0\.tsv \(bytes 1-2\)"):
        list(results)
