"""An epoch's training rows as pieces of its shuffled row sequence, so that a run resumed on another
world size, batch size or data order trains exactly the rows the interrupted epoch had not.

A *segment* is a range [seg_lo, seg_hi) of the epoch's row-group order; shuffling permutes the rows
inside windows of ``shuffle_window`` rows anchored at seg_lo, seeded by (seed, epoch, seg_lo, window).
A fresh epoch's segments depend on its layout: with ``order="local"`` rank r's contiguous share is
one segment, with ``order="exact"`` the whole split is one. A *piece* is positions [start, stop) of one
segment's shuffled sequence, and a *plan* is a list of pieces: the epoch's rows in training order.

Every rank cuts the same plan the same way (``rank_pieces``), so a layout needs only the plan and the
number of batches already run to know which rows are left (``remaining``), whatever layout comes
next. Pieces never re-anchor their windows, so the rows left are read in the very order the
interrupted job would have read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

ORDERS = ("local", "exact")


@dataclass(frozen=True)
class Piece:
    """Positions [start, stop) of segment [seg_lo, seg_hi)'s (window-shuffled) row sequence."""

    seg_lo: int
    seg_hi: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


Plan = List[Piece]


@dataclass(frozen=True)
class Layout:
    """How a job cuts a plan into batches: data order, ranks and rows per rank per step."""

    order: str
    world_size: int
    local_batch_size: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.local_batch_size


def fresh_plan(num_rows: int, layout: Layout, max_batches: Optional[int] = None) -> Plan:
    """A whole epoch in ``layout``: full global batches only (drop_last), at most ``max_batches``."""
    G, B = layout.global_batch, layout.local_batch_size
    full = num_rows // G
    n = full if max_batches is None else min(full, max_batches)
    if n == 0:
        return []
    if layout.order == "exact":
        return [Piece(0, num_rows, 0, n * G)]  # anchored on the whole split: no window depends on G
    return [Piece(r * full * B, (r + 1) * full * B, 0, n * B) for r in range(layout.world_size)]


def plan_rows(plan: Sequence[Piece]) -> int:
    return sum(p.rows for p in plan)


def num_batches(plan: Sequence[Piece], layout: Layout) -> int:
    return plan_rows(plan) // layout.global_batch


def take(plan: Sequence[Piece], lo: int, hi: int) -> Plan:
    """Positions [lo, hi) of the plan's concatenated rows, as pieces."""
    out: Plan = []
    offset = 0
    for p in plan:
        a, b = max(lo, offset), min(hi, offset + p.rows)
        if a < b:
            out.append(Piece(p.seg_lo, p.seg_hi, p.start + a - offset, p.start + b - offset))
        offset += p.rows
        if offset >= hi:
            break
    return _merged(out)


def rank_pieces(plan: Sequence[Piece], layout: Layout, rank: int) -> Plan:
    """What ``rank`` reads of the plan: its contiguous share (local) or every full global batch
    (exact: each rank takes its slice of every global batch)."""
    T = num_batches(plan, layout)
    if layout.order == "exact":
        return take(plan, 0, T * layout.global_batch)
    B = layout.local_batch_size
    return take(plan, rank * T * B, (rank + 1) * T * B)


def remaining(plan: Sequence[Piece], layout: Layout, done: int) -> Plan:
    """The rows of ``plan`` that ``layout`` would still have trained after ``done`` batches."""
    T = num_batches(plan, layout)
    if not 0 <= done <= T:
        raise ValueError(f"{done} batches done of a plan of {T}")
    if layout.order == "exact":
        G = layout.global_batch
        return take(plan, done * G, T * G)
    B = layout.local_batch_size
    return _merged([p for r in range(layout.world_size) for p in take(plan, r * T * B + done * B, (r + 1) * T * B)])


def _merged(pieces: Sequence[Piece]) -> Plan:
    out: Plan = []
    for p in pieces:
        if p.rows <= 0:
            continue
        last = out[-1] if out else None
        if last and (last.seg_lo, last.seg_hi, last.stop) == (p.seg_lo, p.seg_hi, p.start):
            out[-1] = Piece(p.seg_lo, p.seg_hi, last.start, p.stop)
        else:
            out.append(p)
    return out


# -- the data position a checkpoint records ----------------------------------------------------

_FLAG = {
    "split_rows": "train rows",
    "shuffle": "--no-shuffle",
    "seed": "--seed",
    "shuffle_window": "--shuffle-window",
    "order": "--data-order",
    "world_size": "ranks",
    "local_batch_size": "--batch-size",
    "max_batches": "--max-train-batches",
}


class ResumeMismatch(ValueError):
    """The checkpoint stopped inside an epoch whose remaining rows this job cannot read."""


def data_record(
    layout: Layout,
    split_rows: int,
    shuffle: bool,
    seed: int,
    shuffle_window: int,
    max_batches: Optional[int],
    plan: Optional[Sequence[Piece]],
) -> Dict[str, Any]:
    """The JSON a checkpoint keeps; ``plan`` None means the layout's fresh plan."""
    return {
        "order": layout.order,
        "world_size": layout.world_size,
        "local_batch_size": layout.local_batch_size,
        "split_rows": split_rows,
        "shuffle": shuffle,
        "seed": seed,
        "shuffle_window": shuffle_window,
        "max_batches": max_batches,
        "plan": None if plan is None else [[p.seg_lo, p.seg_hi, p.start, p.stop] for p in plan],
    }


def _int(value: Any, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_record(record: Any) -> Dict[str, Any]:
    """``record`` if it is a well-formed data record (types and ranges), else ValueError."""
    if not isinstance(record, dict):
        raise ValueError(f"data position must be an object, got {type(record).__name__}")
    missing = [k for k in _FLAG if k not in record] + ([] if "plan" in record else ["plan"])
    if missing:
        raise ValueError(f"data position lacks {', '.join(missing)}")
    if record["order"] not in ORDERS:
        raise ValueError(f"data order must be one of {ORDERS}, got {record['order']!r}")
    if not isinstance(record["shuffle"], bool):
        raise ValueError(f"shuffle must be true or false, got {record['shuffle']!r}")
    for key in ("world_size", "local_batch_size", "shuffle_window"):
        _int(record[key], key, 1)
    for key in ("split_rows", "seed"):
        _int(record[key], key)
    if record["max_batches"] is not None:
        _int(record["max_batches"], "max_batches")
    if record["plan"] is not None:
        _plan_of(record)
    return record


def _plan_of(record: Dict[str, Any]) -> Optional[Plan]:
    if record["plan"] is None:
        return None
    if not isinstance(record["plan"], list):
        raise ValueError("plan must be a list of [seg_lo, seg_hi, start, stop]")
    n = record["split_rows"]
    plan = []
    for item in record["plan"]:
        if not (isinstance(item, list) and len(item) == 4):
            raise ValueError(f"plan piece must be [seg_lo, seg_hi, start, stop], got {item!r}")
        lo, hi, a, b = (_int(v, "plan piece bound") for v in item)
        if not (lo <= hi <= n and a <= b <= hi - lo):
            raise ValueError(f"plan piece {item} outside a split of {n} rows")
        plan.append(Piece(lo, hi, a, b))
    return plan


def _layout_of(record: Dict[str, Any]) -> Layout:
    return Layout(record["order"], record["world_size"], record["local_batch_size"])


def plan_in(record: Dict[str, Any]) -> Plan:
    """The plan ``record`` was running (its fresh plan when it kept none)."""
    plan = _plan_of(record)
    return fresh_plan(record["split_rows"], _layout_of(record), record["max_batches"]) if plan is None else plan


def resume_plan(saved: Dict[str, Any], done: int, now: Dict[str, Any]) -> Tuple[Optional[Plan], int, Optional[str]]:
    """(plan, first batch, note) for this job's part of the epoch ``saved`` stopped in after
    ``done`` batches. The same layout continues the saved plan at batch ``done``; another layout
    trains the rows left, cut into its own batches (a last part smaller than one global batch
    is not trained, as at the end of every epoch: ``note`` says so). ResumeMismatch when the rows
    left depend on something that changed."""
    if done == 0 and saved["plan"] is None:
        return None, 0, None  # at an epoch boundary: nothing left over to honour
    # The rows left are a function of these: none may change inside an epoch.
    keys = ("split_rows", "shuffle", "seed", "shuffle_window") if saved["shuffle"] else ("split_rows", "shuffle")
    changed = [k for k in keys if saved[k] != now[k]]
    if changed:
        was = ", ".join(f"{_FLAG[k]} {saved[k]}" for k in changed)
        is_ = ", ".join(f"{_FLAG[k]} {now[k]}" for k in changed)
        raise ResumeMismatch(
            f"the checkpoint stopped inside an epoch read with {was}; this job has {is_}, so the rows that "
            "epoch had left cannot be found: resume with the same values (or from an epoch-end checkpoint)"
        )
    plan = plan_in(saved)
    layout_saved = _layout_of(saved)
    if not 0 <= done <= num_batches(plan, layout_saved):
        raise ValueError(
            f"the checkpoint's batch {done} lies outside its epoch of {num_batches(plan, layout_saved)} batches"
        )
    same = all(saved[k] == now[k] for k in ("order", "world_size", "local_batch_size", "max_batches"))
    if same:
        return _plan_of(saved), done, None
    left = remaining(plan, layout_saved, done)
    layout_now = _layout_of(now)
    dropped = plan_rows(left) % layout_now.global_batch
    note = None
    if dropped:
        note = (
            f"the epoch's {plan_rows(left)} rows left are not a multiple of this job's global batch "
            f"({layout_now.global_batch}): its last {dropped} rows are not trained, as at every epoch's end"
        )
    return left, 0, note
