"""The saved vocabulary (data_prep/vocabulary.py): re-encoding the raw samples through it gives
exactly the prepared ids (exact and hashed features, hex and token values, rare values at
min_count), and values it does not know get the OOV id 0 and are counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.avazu import AVAZU_HEADER, prepare_avazu
from data_prep.criteo import prepare_criteo_kaggle
from data_prep.dataset_format import read_meta
from data_prep.splits import RandomSplit
from data_prep.vocabulary import Vocabulary, keys_to_raw, raw_to_keys

SAMPLES = Path(__file__).resolve().parents[1] / "data_prep" / "samples"


def _prepared_ids(ds: Path) -> pa.Table:
    meta = read_meta(ds)
    # the splits in input order: Kaggle's reference split holds test first in its last chunk
    splits = ("train", "test", "val") if meta["dataset"] == "criteo-kaggle" else ("train", "val", "test")
    files = [ds / f for s in splits for f in meta["splits"][s]["files"]]
    return pa.concat_tables([pq.read_table(f) for f in files])


def _raw_columns(path: Path, sep: str, names: List[str], skip_header: bool) -> Dict[str, List[str]]:
    lines = path.read_text().splitlines()[1 if skip_header else 0 :]
    rows = [line.split(sep) for line in lines]
    return {name: [r[i] for r in rows] for i, name in enumerate(names)}


def _check_round_trip(ds: Path, raw: Dict[str, List[str]], order: Optional[np.ndarray] = None) -> None:
    """``order``: raw row of each prepared row (the splits concatenated), default input order."""
    meta = read_meta(ds)
    assert meta["rows_rejected"] == 0  # every raw line is a prepared row, in input order
    vocab = Vocabulary.load(ds)
    prepared = _prepared_ids(ds)
    for name in meta["sparse_features"]:
        values = raw[name] if order is None else [raw[name][i] for i in order]
        encoded = vocab.encode(name, values)
        assert encoded.ids.tolist() == prepared.column(name).to_pylist(), name
        assert encoded.malformed == 0


@pytest.mark.parametrize("min_count", [1, 3])
def test_criteo_sample_round_trips(tmp_path: Path, min_count: int) -> None:
    ds = tmp_path / "criteo"
    prepare_criteo_kaggle(SAMPLES / "criteo_sample.tsv", ds, min_count=min_count, hash_size=100)
    meta = read_meta(ds)
    hashed = [f for f, e in meta["vocabulary"]["features"].items() if e["hashed"]]
    assert hashed and len(hashed) < 26  # both kinds of feature are exercised
    assert meta["vocabulary"]["oov_id"] == 0
    names = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]
    _check_round_trip(ds, _raw_columns(SAMPLES / "criteo_sample.tsv", "\t", names, skip_header=False))


def test_avazu_sample_round_trips_token_values(tmp_path: Path) -> None:
    ds = tmp_path / "avazu"
    prepare_avazu(SAMPLES / "avazu_sample.csv", ds)
    raw = _raw_columns(SAMPLES / "avazu_sample.csv", ",", AVAZU_HEADER.split(","), skip_header=True)
    lines = np.arange(2, len(raw["click"]) + 2)  # 1-based, after the header
    order = np.argsort(RandomSplit(seed=0).assign(0, lines, 0, 0), kind="stable")  # rows by split, input order
    _check_round_trip(ds, raw, order)
    table = pq.read_table(ds / "vocab" / "banner_pos.parquet")
    assert table.column("value").to_pylist()[:2] == ["0", "1"]  # human-readable raw values


def test_unknown_values_get_the_oov_id_and_are_counted(tmp_path: Path) -> None:
    ds = tmp_path / "criteo"
    prepare_criteo_kaggle(SAMPLES / "criteo_sample.tsv", ds)
    vocab = Vocabulary.load(ds)
    known = pq.read_table(ds / "vocab" / "C3.parquet").slice(0, 2).to_pylist()
    out = vocab.encode("C3", [known[0]["value"], "ffffffff", "not-hex", known[1]["value"]])
    assert out.ids.tolist() == [known[0]["id"], 0, 0, known[1]["id"]]
    assert out.unknown == 2 and out.malformed == 1
    with pytest.raises(KeyError, match="no vocabulary for feature 'C99'"):
        vocab.encode("C99", ["x"])


def test_keys_and_raw_values_invert(tmp_path: Path) -> None:
    for kind, values in (("hex8", ["", "00000000", "ffffffff", "0a1b2c3d"]), ("token7", ["", "0", "a.b-_Z9", "1005"])):
        ok, keys = raw_to_keys(kind, values)
        assert ok.all() and keys_to_raw(kind, keys).to_pylist() == values


def test_hex_values_come_back_digit_for_digit_with_and_without_empty_values() -> None:
    """keys_to_raw's hex8 byte-pair table (and its no-empty-value fast path) against Python's own
    formatting of random 32-bit values, including the extremes."""
    rng = np.random.default_rng(0)
    values = [f"{v:08x}" for v in rng.integers(0, 1 << 32, 5000, dtype=np.int64)] + ["00000000", "ffffffff"]
    for raw in (values, values[:2500] + [""] + values[2500:]):
        ok, keys = raw_to_keys("hex8", raw)
        assert ok.all() and keys_to_raw("hex8", keys).to_pylist() == raw


def test_dataset_without_vocabulary_is_one_line(tmp_path: Path) -> None:
    ds = tmp_path / "criteo"
    prepare_criteo_kaggle(SAMPLES / "criteo_sample.tsv", ds)
    meta = json.loads((ds / "meta.json").read_text())
    del meta["vocabulary"]
    (ds / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="has no vocabulary"):
        Vocabulary.load(ds)
