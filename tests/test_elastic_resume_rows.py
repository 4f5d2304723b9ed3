"""Resume on another world size, batch or data order trains exactly the rows the interrupted epoch
had left, checked row by row: the rows trained before the stop plus the rows trained after it are
the uninterrupted epoch's rows, none twice, none lost (except a last part smaller than one of the
new job's global batches, which is counted and reported, as at every epoch's end).

Each case is what train.py does with a checkpoint: the old job's streams run ``done`` batches on
every rank, its data position goes through JSON (as in train_state.json), and the new job's streams
read ``resume_plan``'s rows. The data has a unique row id in a dense column, so rows are told
apart exactly.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple

import pyarrow as pa
import pytest

from data_prep.dataset_format import read_meta
from data_prep.generate.synthetic import generate_dataset
from mlet_dist.data.epoch_plan import (
    Layout,
    Piece,
    ResumeMismatch,
    check_record,
    fresh_plan,
    plan_rows,
    rank_pieces,
    remaining,
    resume_plan,
)
from mlet_dist.data.parquet_batches import ParquetBatchStream

ROWS_PER_GROUP = 200
WINDOW = 300


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train split of ~3,100 rows whose first dense column is the row's index (its identity)."""
    import pyarrow.parquet as pq

    out = tmp_path_factory.mktemp("elastic") / "data"
    generate_dataset(out, rows=3600, table_sizes=[20] * 26, seed=0, rows_per_file=700, row_group_rows=ROWS_PER_GROUP)
    meta = read_meta(out)
    dense0 = meta["dense_features"][0]
    index = 0
    for rel in meta["splits"]["train"]["files"]:  # rewrite the first dense column as the row id
        path = out / rel
        table = pq.read_table(path)
        ids = pa.array(range(index, index + table.num_rows), type=table.schema.field(dense0).type)
        index += table.num_rows
        table = table.set_column(table.schema.get_field_index(dense0), dense0, ids)
        pq.write_table(table, path, row_group_size=ROWS_PER_GROUP)
    assert index == meta["splits"]["train"]["rows"]
    return out


Shape = Tuple[int, int, str]  # (ranks, rows per rank per step, data order)


def _streams(ds: Path, shape: Shape, shuffle: bool, seed: int = 5, max_batches: Optional[int] = None):
    world, batch, order = shape
    return [
        ParquetBatchStream(
            ds,
            "train",
            batch,
            rank=r,
            world_size=world,
            order=order,
            shuffle=shuffle,
            seed=seed,
            shuffle_window=WINDOW,
            max_batches=max_batches,
        )
        for r in range(world)
    ]


def _row_ids(streams, epoch: int, start: int = 0, stop: Optional[int] = None, plan=None) -> List[int]:
    """Row ids trained by batches [start, stop) on every rank (valid rows only)."""
    ids: List[int] = []
    for s in streams:
        for i, lb in enumerate(s.iter_from(start, epoch, plan)):
            if stop is not None and start + i >= stop:
                break
            ids.extend(int(v) for v in lb.batch.dense_features[: lb.num_valid, 0].tolist())
    return ids


def _resume(
    ds: Path,
    old: Shape,
    new: Shape,
    shuffle: bool,
    done: int,
    epoch: int = 1,
    old_record: Optional[dict] = None,
    old_plan=None,
):
    """(rows before, rows after, rows the uninterrupted epoch trains, the resumed plan, its note)."""
    before_streams = _streams(ds, old, shuffle)
    whole = _row_ids(before_streams, epoch, plan=old_plan)
    before = _row_ids(before_streams, epoch, 0, done, plan=old_plan)
    record = json.loads(json.dumps(old_record or before_streams[0].data_record(old_plan)))  # as in train_state.json
    after_streams = _streams(ds, new, shuffle)
    plan, start, note = resume_plan(check_record(record), done, after_streams[0].data_record(None))
    per_rank = [len(list(s.iter_from(start, epoch, plan))) for s in after_streams]
    assert len(set(per_rank)) == 1, f"ranks would run {per_rank} batches: the job would hang"
    after = _row_ids(after_streams, epoch, start, plan=plan)
    return before, after, whole, plan, note


CASES = [
    ((2, 64, "local"), (1, 128, "local")),  # 2 -> 1, same global batch
    ((2, 64, "local"), (4, 32, "local")),  # 2 -> 4
    ((2, 64, "local"), (1, 96, "local")),  # another global batch
    ((2, 64, "local"), (3, 50, "local")),  # another world size and batch
    ((2, 64, "exact"), (1, 96, "exact")),
    ((2, 64, "exact"), (4, 32, "exact")),
    ((2, 64, "local"), (2, 64, "exact")),  # another data order
    ((4, 32, "exact"), (2, 40, "local")),
]


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "file-order"])
@pytest.mark.parametrize("old,new", CASES, ids=[f"{a[0]}x{a[1]}{a[2][0]}-{b[0]}x{b[1]}{b[2][0]}" for a, b in CASES])
def test_resumed_rows_are_exactly_the_rows_left(dataset: Path, old: Shape, new: Shape, shuffle: bool) -> None:
    before, after, whole, plan, note = _resume(dataset, old, new, shuffle, done=3)
    assert len(set(whole)) == len(whole) and len(before) == 3 * old[0] * old[1]
    left = Counter(whole) - Counter(before)
    got = Counter(after)
    assert not got - left, f"{sum((got - left).values())} rows trained again or never in the epoch"
    assert max(got.values()) == 1
    lost = sum((left - got).values())
    G = new[0] * new[1]
    assert lost == plan_rows(plan) % G < G, (lost, plan_rows(plan), G)
    assert (note is None) == (lost == 0) and (note is None or f"last {lost} rows" in note)


def test_a_resumed_epoch_resumes_again_in_a_third_shape(dataset: Path) -> None:
    """2x64 stops after 3 batches, 3x50 resumes and stops after 2, 1x128 finishes: the three
    parts are the uninterrupted 2x64 epoch's rows (the second job's plan is its checkpoint's)."""
    before, _, whole, plan, _ = _resume(dataset, (2, 64, "local"), (3, 50, "local"), True, done=3)
    middle_streams = _streams(dataset, (3, 50, "local"), True)
    middle = _row_ids(middle_streams, 1, 0, 2, plan=plan)
    record = middle_streams[0].data_record(plan)
    _, last, _, plan3, _ = _resume(
        dataset, (3, 50, "local"), (1, 128, "local"), True, done=2, old_record=record, old_plan=plan
    )
    parts = Counter(before) + Counter(middle) + Counter(last)
    assert max(parts.values()) == 1
    assert sum((Counter(whole) - parts).values()) < 3 * 50 + 128  # only the two shapes' short tails


def test_same_shape_continues_the_plan_at_the_next_batch(dataset: Path) -> None:
    before, after, whole, plan, note = _resume(dataset, (2, 64, "local"), (2, 64, "local"), True, done=3)
    streams = _streams(dataset, (2, 64, "local"), True)
    assert plan is None and note is None
    assert after == _row_ids(streams, 1, 3) and Counter(before) + Counter(after) == Counter(whole)


def test_the_cap_of_max_train_batches_belongs_to_the_interrupted_epoch(dataset: Path) -> None:
    old = _streams(dataset, (2, 64, "local"), True, max_batches=5)
    record = json.loads(json.dumps(old[0].data_record(None)))
    new = _streams(dataset, (1, 32, "local"), True, max_batches=5)
    plan, start, _ = resume_plan(record, 2, new[0].data_record(None))
    assert start == 0 and plan_rows(plan) == (5 - 2) * 128 and new[0].num_batches(plan) == 12
    assert Counter(_row_ids(old, 1)) == Counter(_row_ids(old, 1, 0, 2)) + Counter(_row_ids(new, 1, plan=plan))


@pytest.mark.parametrize("flag,value", [("seed", 6), ("shuffle", False), ("shuffle_window", 301), ("split_rows", 10)])
def test_what_decides_the_rows_left_may_not_change_mid_epoch(dataset: Path, flag: str, value: object) -> None:
    record = _streams(dataset, (2, 64, "local"), True)[0].data_record(None)
    now = {**_streams(dataset, (1, 64, "local"), True)[0].data_record(None), flag: value}
    with pytest.raises(ResumeMismatch, match="cannot be found"):
        resume_plan(record, 3, now)
    assert resume_plan(record, 0, now) == (None, 0, None)  # an epoch boundary: nothing left to honour


def test_exact_order_windows_do_not_depend_on_the_global_batch(dataset: Path) -> None:
    """The audit's case: exact order, shuffled, 2x64 then 1x96 at the same step read the last
    window of the epoch permuted differently (92 rows twice, 92 never). 1x128 vs 1x112 here."""
    a = _row_ids(_streams(dataset, (1, 128, "exact"), True), 0)  # one rank: the global sequence
    b = _row_ids(_streams(dataset, (1, 112, "exact"), True), 0)  # both cut the window [3000, 3300)
    n = min(len(a), len(b))
    assert a[:n] == b[:n]


def test_plan_arithmetic() -> None:
    layout = Layout("local", 2, 10)
    plan = fresh_plan(45, layout)  # 2 batches of 2 x 10; 5 rows dropped
    assert plan == [Piece(0, 20, 0, 20), Piece(20, 40, 0, 20)]
    assert rank_pieces(plan, layout, 1) == [Piece(20, 40, 0, 20)]
    left = remaining(plan, layout, 1)
    assert left == [Piece(0, 20, 10, 20), Piece(20, 40, 10, 20)]
    assert rank_pieces(left, Layout("local", 4, 5), 1) == [Piece(0, 20, 15, 20)]
    assert rank_pieces(left, Layout("exact", 1, 15), 0) == [Piece(0, 20, 10, 20), Piece(20, 40, 10, 15)]
    with pytest.raises(ValueError):
        remaining(plan, layout, 3)


@pytest.mark.parametrize(
    "bad",
    [
        {"plan": [[0, 99999, 0, 5]]},
        {"plan": [[0, 10, 5, 2]]},
        {"world_size": 0},
        {"seed": "1"},
        {"shuffle": "no"},
        {"order": "random"},
        {"local_batch_size": True},
        {"plan": "all"},
    ],
)
def test_a_tampered_record_is_refused(dataset: Path, bad: dict) -> None:
    record = {**_streams(dataset, (2, 64, "local"), True)[0].data_record(None), **bad}
    with pytest.raises(ValueError):
        check_record(record)


def test_shuffle_permutes_row_groups_and_the_rows_inside_windows(dataset: Path) -> None:
    """Both halves of the shuffle act: an identity row-group permutation would keep the first
    window's rows the file's first rows, an identity window permutation would keep file neighbours
    next to each other (the previous shuffle tests passed with either)."""
    ids = _row_ids(_streams(dataset, (1, 64, "local"), True), 0)
    assert set(ids[:WINDOW]) != set(range(WINDOW))
    groups = list(dict.fromkeys(i // ROWS_PER_GROUP for i in ids))  # row groups in order of first use
    assert groups != sorted(groups)
    neighbours = sum(b == a + 1 for a, b in zip(ids, ids[1:])) / (len(ids) - 1)
    assert neighbours < 0.05, f"{neighbours:.0%} of consecutive rows are file neighbours"
    plain = _row_ids(_streams(dataset, (1, 64, "local"), False), 0)
    assert sum(b == a + 1 for a, b in zip(plain, plain[1:])) == len(plain) - 1  # the check can see order


@pytest.mark.parametrize("split", ["val", "test"])
@pytest.mark.parametrize("world,order", [(1, "local"), (2, "local"), (3, "local"), (2, "exact"), (4, "exact")])
def test_capped_evaluation_scores_the_same_prefix_at_every_world_size(
    dataset: Path, split: str, world: int, order: str
) -> None:
    """--max-eval-batches 3 at --batch-size 50 scores the split's first 150 rows whatever the ranks
    (the audit: 1 rank scored rows 0-127, 2 ranks 256 rows spread over 0-449)."""
    from data_prep.dataset_format import read_meta as meta_of
    import pyarrow.parquet as pq

    meta = meta_of(dataset)
    table = pa.concat_tables([pq.read_table(dataset / f) for f in meta["splits"][split]["files"]])
    first = [tuple(table.column(c)[i].as_py() for c in meta["sparse_features"]) for i in range(150)]
    streams = [
        ParquetBatchStream(dataset, split, 50, rank=r, world_size=world, order=order, drop_last=False, max_batches=3)
        for r in range(world)
    ]
    per_rank = [list(s) for s in streams]
    assert len({len(b) for b in per_rank}) == 1
    rows = [
        [
            tuple(int(lb.batch.sparse_features[c].values()[i]) for c in meta["sparse_features"])
            for i in range(lb.num_valid)
        ]
        for b in per_rank
        for lb in b
    ]
    if order == "local":  # rank-major
        got = [r for batch in rows for r in batch]
    else:  # batch-major: global batch b is rank 0's slice, rank 1's, ...
        nb = len(per_rank[0])
        got = [r for b in range(nb) for rank in range(world) for r in rows[rank * nb + b]]
    assert got == first
