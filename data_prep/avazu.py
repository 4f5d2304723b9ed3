"""Avazu CTR (Kaggle train.csv) preparation. See FORMAT.md.

* `id` is dropped; `click` becomes `label` (int8).
* `hour` (YYMMDDHH, year 20YY) becomes two dense float32 features, not
  log-transformed: `hour_of_day` (0-23) and `weekday` (0 = Monday .. 6).
* The other 21 columns are categorical tables named as in the header. Hash-like
  columns (site_id ... device_model) must be empty or 8 lowercase hex digits;
  the integer-coded ones (C1, banner_pos, device_type, device_conn_type,
  C14..C21) may be any token of at most 7 characters of [0-9A-Za-z._-].
* Split: every data line independently goes to train/val/test with probability
  0.8/0.1/0.1, decided by a seeded hash of its line number (--seed).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from data_prep.dataset_format import DATASET_AVAZU, LABEL
from data_prep.parallel.driver import run_prep
from data_prep.spec import DatasetSpec, PathLike, PrepConfig, PrepResult, RawColumn
from data_prep.splits import RandomSplit

AVAZU_HEX_COLUMNS = (
    "site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category",
    "device_id", "device_ip", "device_model",
)  # fmt: skip
AVAZU_HEADER = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
    "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
)


def _columns():
    cols = []
    for name in AVAZU_HEADER.split(","):
        if name == "id":
            cols.append(RawColumn(name, "ignore"))
        elif name == "click":
            cols.append(RawColumn(LABEL, "label"))
        elif name == "hour":
            cols.append(RawColumn(name, "yymmddhh"))
        else:
            cols.append(RawColumn(name, "hex8" if name in AVAZU_HEX_COLUMNS else "token7"))
    return tuple(cols)


AVAZU_SPEC = DatasetSpec(
    name=DATASET_AVAZU, columns=_columns(), sep=b",", sep_name="comma-separated", header=AVAZU_HEADER.encode()
)


def prepare_avazu(
    src: PathLike,
    out: PathLike,
    config: Optional[PrepConfig] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    **overrides: Any,
) -> PrepResult:
    """Avazu train.csv (plain or gzip, with header) -> prepared dataset at `out`."""
    cfg = dataclasses.replace(config or PrepConfig(), **overrides)
    policy = RandomSplit(cfg.seed, val_fraction, test_fraction)
    extra = {
        "dense_transform": "hour (YYMMDDHH) -> hour_of_day 0-23, weekday 0=Monday..6; float32, no log",
        "sparse_transform": "train-split vocabulary: id 0 = rare/unseen, ids 1.. by descending train count",
    }
    return run_prep(AVAZU_SPEC, [src], out, cfg, policy, extra)
