"""Tests for the streaming data_prep pipeline: Avazu, Criteo Terabyte, synthetic data,
block-size independence, truncated gzip, hashing and the memory cap, the CLI."""

from __future__ import annotations

import csv
import datetime
import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep import prepare_avazu, prepare_criteo_kaggle, prepare_criteo_terabyte, read_meta
from data_prep import splits, textio, writers
from data_prep.avazu import AVAZU_HEADER
from data_prep.cli import main as cli_main
from data_prep.dataset_format import CRITEO_SPARSE_FEATURES
from data_prep.generate.synthetic import TABLE_SIZE_PRESETS, generate_dataset, write_criteo_tsv, zipf_ids

REPO = Path(__file__).resolve().parents[1]
CRITEO = REPO / "data_prep" / "samples" / "criteo_sample.tsv"
AVAZU = REPO / "data_prep" / "samples" / "avazu_sample.csv"
SPLITS = ("train", "val", "test")


def table(out: Path, split: str):
    files = [out / f for f in read_meta(out)["splits"][split]["files"]]
    return pq.ParquetDataset(files).read() if files else None


def rejects(out: Path) -> List[List[bytes]]:
    return [r.split(b"\t", 3) for r in (out / "rejects.tsv").read_bytes().split(b"\n")[1:-1]]


def accounted(meta: Dict) -> bool:
    return meta["rows_read"] == meta["rows_rejected"] + sum(meta["splits"][s]["rows"] for s in SPLITS)


def all_bytes(out: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------
# Avazu
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def avazu_raw() -> List[List[str]]:
    with open(AVAZU, newline="") as f:
        return list(csv.reader(f))[1:]


@pytest.fixture(scope="module")
def avazu_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("av") / "avazu"
    prepare_avazu(AVAZU, out)
    return out


def test_avazu_sample_round_trip(avazu_out: Path, avazu_raw) -> None:
    meta = read_meta(avazu_out)
    assert meta["dataset"] == "avazu" and meta["rows_read"] == 8999 == len(avazu_raw)
    assert meta["rows_rejected"] == 0 and accounted(meta)
    header = AVAZU_HEADER.split(",")
    assert meta["dense_features"] == ["hour_of_day", "weekday"]
    assert meta["sparse_features"] == header[3:] and len(meta["sparse_features"]) == 21
    rows = {s: meta["splits"][s]["rows"] for s in SPLITS}
    assert abs(rows["train"] / 8999 - 0.8) < 0.03 and abs(rows["val"] / 8999 - 0.1) < 0.02
    # Reconstruct which raw line went where (split by seeded hash of the line number).
    policy = splits.RandomSplit(0)
    codes = policy.assign(0, np.arange(2, 9001), 0, 0)
    assert [int((codes == k).sum()) for k in range(3)] == list(rows.values())
    train_raw = [r for r, c in zip(avazu_raw, codes) if c == 0]
    val_raw = [r for r, c in zip(avazu_raw, codes) if c == 1]
    train, val = table(avazu_out, "train"), table(avazu_out, "val")
    assert train.column("label").to_pylist() == [int(r[1]) for r in train_raw]
    when = datetime.datetime.strptime("20" + train_raw[0][2], "%Y%m%d%H")
    assert set(train.column("hour_of_day").to_pylist()) == {float(when.hour)}
    assert set(train.column("weekday").to_pylist()) == {float(when.weekday())}  # 2014-10-21: Tuesday = 1
    for j, name in enumerate(header[3:], start=3):
        ids = train.column(name).to_numpy()
        id_of: Dict[str, int] = {}
        for value, i in zip((r[j] for r in train_raw), ids):
            assert id_of.setdefault(value, int(i)) == i, name
        counts = Counter(r[j] for r in train_raw)
        order = sorted(counts, key=lambda v: (-counts[v], v.encode()))
        assert [id_of[v] for v in order] == list(range(1, len(order) + 1)), name
        assert meta["table_sizes"][name] == len(order) + 1
        val_ids = val.column(name).to_numpy()
        assert all(val_ids[i] == id_of.get(r[j], 0) for i, r in enumerate(val_raw)), name


def test_avazu_histograms(avazu_out: Path, avazu_raw) -> None:
    meta = read_meta(avazu_out)
    train_rows = meta["splits"]["train"]["rows"]
    for name in meta["sparse_features"]:
        h = meta["id_histograms"][name]
        assert sum(h["rows_per_bucket"]) == train_rows
        assert sum(h["values_per_bucket"]) == h["distinct_train_values"] == meta["table_sizes"][name] - 1
        assert h["id0_rows"]["train"] == 0 and not h["hashed"]


def _avazu_lines(n: int) -> List[str]:
    return AVAZU.read_text().splitlines()[: n + 1]


def test_avazu_malformed_lines(tmp_path: Path) -> None:
    lines = _avazu_lines(12)
    f = lines[1].split(",")

    def w(col: int, value: str) -> str:
        g = list(f)
        g[col] = value
        return ",".join(g)

    bad_lines = {
        3: ",".join(f[:23]),  # 23 columns
        4: w(1, "2"),  # bad label
        5: w(2, "14102199"),  # hour 99
        6: w(2, "14023100"),  # Feb 31
        7: w(5, "XYZ"),  # site_id not hex
        8: w(16, "12345678"),  # C14 token too long
        9: "",  # empty line
    }
    body = list(lines)
    for line_no, text in sorted(bad_lines.items()):
        body.insert(line_no - 1, text)
    src = tmp_path / "bad.csv"
    src.write_bytes(("\r\n".join(body)).encode())  # CRLF and no trailing newline
    out = tmp_path / "out"
    result = prepare_avazu(src, out)
    meta = read_meta(out)
    assert result.rows_read == 12 + len(bad_lines) and result.rows_rejected == len(bad_lines) and accounted(meta)
    recs = rejects(out)
    assert [int(r[1]) for r in recs] == sorted(bad_lines)
    assert all(r[0] == b"bad.csv" for r in recs)
    assert [r[3].decode() for r in recs] == [bad_lines[k] for k in sorted(bad_lines)]
    reasons = [r[2].decode() for r in recs]
    assert "24 comma-separated" in reasons[0] and "label" in reasons[1]
    assert "hour" in reasons[2] and "hour" in reasons[3] and "site_id" in reasons[4] and "C14" in reasons[5]
    assert reasons[6] == "empty line"
    assert meta["rows_rejected_by_kind"]["bad_value:hour"] == 2
    with pytest.raises(ValueError, match=r"bad\.csv:3: .*24"):
        prepare_avazu(src, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_avazu_header_empty_and_gzip(tmp_path: Path) -> None:
    nohdr = tmp_path / "nohdr.csv"
    nohdr.write_text("\n".join(_avazu_lines(5)[1:]) + "\n")
    with pytest.raises(ValueError, match=r"nohdr\.csv:1: expected the header"):
        prepare_avazu(nohdr, tmp_path / "o1")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    r = prepare_avazu(empty, tmp_path / "o2")
    assert r.rows_read == 0 and set(r.table_sizes.values()) == {1}
    plain = tmp_path / "a.csv"
    plain.write_text("\n".join(_avazu_lines(300)) + "\n")
    gz = tmp_path / "a.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = prepare_avazu(plain, tmp_path / "p"), prepare_avazu(gz, tmp_path / "g")
    assert a.rows_read == 300 and a.split_rows == b.split_rows
    assert table(tmp_path / "p", "train").equals(table(tmp_path / "g", "train"))
    c = prepare_avazu(plain, tmp_path / "s7", seed=7)
    assert c.split_rows != a.split_rows or not table(tmp_path / "s7", "train").equals(table(tmp_path / "p", "train"))


# ----------------------------------------------------------------------------
# Streaming: block size independence, gzip, line endings
# ----------------------------------------------------------------------------


def test_kaggle_output_is_independent_of_block_size(tmp_path: Path) -> None:
    """Tiny blocks exercise the tail pass from a mid-file checkpoint and the
    row-group buffering; the bytes must equal the one-block run."""
    ref = tmp_path / "ref"
    prepare_criteo_kaggle(CRITEO, ref, rows_per_file=3000, row_group_rows=700)
    gz = tmp_path / "c.tsv.gz"
    gz.write_bytes(gzip.compress(CRITEO.read_bytes()))
    for i, (src, block) in enumerate([(CRITEO, 4096), (CRITEO, 100_003), (gz, 65_536)]):
        out = tmp_path / f"o{i}"
        prepare_criteo_kaggle(src, out, rows_per_file=3000, row_group_rows=700, block_bytes=block)
        a, b = all_bytes(ref), all_bytes(out)
        meta_a, meta_b = json.loads(a.pop("meta.json")), json.loads(b.pop("meta.json"))
        assert a == b, (src.name, block)
        meta_a.pop("source"), meta_b.pop("source"), meta_a.pop("sources"), meta_b.pop("sources")
        meta_a.pop("rows_per_source"), meta_b.pop("rows_per_source")
        assert meta_a == meta_b


def test_multi_member_gzip(tmp_path: Path) -> None:
    lines = CRITEO.read_bytes().splitlines(keepends=True)[:100]
    src = tmp_path / "mm.gz"
    src.write_bytes(gzip.compress(b"".join(lines[:40])) + gzip.compress(b"".join(lines[40:])))
    r = prepare_criteo_kaggle(src, tmp_path / "o")
    assert (r.rows_read, r.rows_rejected) == (100, 0)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_gzip_is_rejected_and_counted(tmp_path: Path, cut: float) -> None:
    data = b"".join(CRITEO.read_bytes().splitlines(keepends=True)[:3000])
    full = gzip.compress(data)
    src = tmp_path / "trunc.tsv.gz"
    src.write_bytes(full[: int(len(full) * cut)])
    out = tmp_path / "o"
    r = prepare_criteo_kaggle(src, out, block_bytes=1 << 16)
    meta = read_meta(out)
    assert accounted(meta) and r.rows_rejected == 1 and 0 < r.rows_read < 3000
    (rec,) = rejects(out)
    assert rec[0] == b"trunc.tsv.gz" and b"truncated gzip" in rec[2]
    kept = r.rows_read - 1
    assert int(rec[1]) == kept + 1  # the line after the last complete one
    assert data.startswith(b"".join(CRITEO.read_bytes().splitlines(keepends=True)[:kept]) + rec[3])
    assert meta["rows_rejected_by_kind"] == {"gzip": 1}
    with pytest.raises(ValueError, match=rf"trunc\.tsv\.gz:{kept + 1}: .*truncated gzip"):
        prepare_criteo_kaggle(src, tmp_path / "strict", strict=True)


def test_line_reader_edge_cases(tmp_path: Path) -> None:
    p = tmp_path / "x"
    for content, expected in [
        (b"", []),
        (b"\n", [b""]),
        (b"a\r\nb\r\n", [b"a", b"b"]),
        (b"a\nb", [b"a", b"b"]),
        (b"a\rb\n\r\n", [b"a\rb", b""]),  # a bare CR is data, not a line break
    ]:
        p.write_bytes(content)
        for block_bytes in (1, 3, 1 << 20):
            got = [blk.line(i) for blk in textio.iter_line_blocks(p, block_bytes) for i in range(blk.num_lines)]
            assert got == expected, (content, block_bytes)


def test_dense_parser_values() -> None:
    raw = [b"", b"0", b"-5", b"7", b"12345678", b"123456789012", b"9" * 30, b"-", b"1.5", b"9" * 31, b"+1"]
    block_bytes = b"\t".join(raw) + b"\n"
    arr = np.zeros(len(block_bytes) + 64, np.uint8)
    arr[: len(block_bytes)] = np.frombuffer(block_bytes, np.uint8)
    ends = np.cumsum([len(r) + 1 for r in raw]) - 1
    starts = ends - np.array([len(r) for r in raw])
    ok, val = textio.parse_dense_log(arr, starts, ends)
    assert ok.tolist() == [True] * 7 + [False] * 4
    expect = [0, 0, 0, 7, 12345678, 123456789012, 1e30]
    assert np.allclose(val[:7], np.log1p(np.array(expect, dtype=np.float64)).astype(np.float32))


# ----------------------------------------------------------------------------
# Vocabulary: threshold, hashing, memory cap
# ----------------------------------------------------------------------------


def test_hash_size_caps_large_tables(tmp_path: Path) -> None:
    out = tmp_path / "h"
    r = prepare_criteo_kaggle(CRITEO, out, hash_size=64)
    base = prepare_criteo_kaggle(CRITEO, tmp_path / "b")
    meta = read_meta(out)
    hashed = set(meta["hashed_features"])
    assert hashed == {n for n, s in base.table_sizes.items() if s > 64} and hashed
    rows = CRITEO.read_text().splitlines()
    train = table(out, "train")
    for name in CRITEO_SPARSE_FEATURES:
        size = r.table_sizes[name]
        ids = train.column(name).to_numpy()
        assert ids.max() < size
        if name in hashed:
            assert size == 64 and meta["id_histograms"][name]["hashed"]
            col = 14 + CRITEO_SPARSE_FEATURES.index(name)
            id_of: Dict[str, int] = {}
            for line, i in zip(rows, ids):
                assert id_of.setdefault(line.split("\t")[col], int(i)) == i
        else:
            assert size == base.table_sizes[name]


def test_memory_cap_falls_back_to_hashing(tmp_path: Path) -> None:
    days = tmp_path / "days"
    sizes = [1_000_000] * 3 + [50] * 23
    for d in range(3):
        write_criteo_tsv(days / f"day_{d}.gz", rows=12_000, table_sizes=sizes, exponent=0.5, seed=d)
    exact = prepare_criteo_terabyte([days], tmp_path / "exact", hash_size=1000)
    capped = prepare_criteo_terabyte([days], tmp_path / "capped", count_memory_mb=0.5, hash_size=1000)
    assert set(exact.meta["hashed_features"]) == {"C1", "C2", "C3"}  # over hash_size
    assert all("hash_size" in v for v in exact.meta["hashed_features"].values())
    hashed = capped.meta["hashed_features"]
    assert any("count_memory_mb" in v for v in hashed.values())
    assert set(hashed) <= {"C1", "C2", "C3"}
    for name in CRITEO_SPARSE_FEATURES:
        assert capped.table_sizes[name] == exact.table_sizes[name]
    # Same ids either way: the hashed features hash the same way, the others are exact.
    for split in SPLITS:
        assert table(tmp_path / "capped", split).equals(table(tmp_path / "exact", split))


# ----------------------------------------------------------------------------
# Criteo Terabyte
# ----------------------------------------------------------------------------


def test_terabyte_day_split_and_vocab(tmp_path: Path) -> None:
    lines = CRITEO.read_bytes().splitlines(keepends=True)
    days = tmp_path / "in"
    days.mkdir()
    chunks = [lines[:3000], lines[3000:6000], lines[6000:]]
    chunks[1] = chunks[1][:10] + [b"1\tbad line\n"] + chunks[1][10:]
    for d, chunk in enumerate(chunks):
        (days / f"day_{d}.gz").write_bytes(gzip.compress(b"".join(chunk)))
    (days / "notes.txt").write_text("ignored")
    out = tmp_path / "tb"
    r = prepare_criteo_terabyte([days], out, progress=False)
    meta = read_meta(out)
    assert meta["dataset"] == "criteo-terabyte" and meta["sources"] == ["day_0.gz", "day_1.gz", "day_2.gz"]
    assert r.rows_read == 9001 and r.rows_rejected == 1 and accounted(meta)
    assert r.split_rows == {"train": 6000, "val": 1500, "test": 1500}
    assert meta["rows_per_source"] == {"day_0.gz": 3000, "day_1.gz": 3000, "day_2.gz": 3000}
    (rec,) = rejects(out)
    assert rec[:2] == [b"day_1.gz", b"11"]
    # Vocabulary from the train days only; the same as Kaggle prep of those 6000 rows' values.
    train_vals = Counter(l.split(b"\t")[14 + 2] for l in lines[:6000])
    assert r.table_sizes["C3"] == len(train_vals) + 1
    val = table(out, "val")
    val_raw = [l.rstrip(b"\n").split(b"\t") for l in lines[6000:7500]]
    assert val.column("label").to_pylist() == [int(f[0]) for f in val_raw]
    unseen = [f[14 + 2] not in train_vals for f in val_raw]
    assert ((val.column("C3").to_numpy() == 0) == np.array(unseen)).all()
    assert meta["id_histograms"]["C3"]["id0_rows"]["val"] == sum(unseen)
    # Explicit file list in given order works too; one file is refused.
    with pytest.raises(ValueError, match="at least 2"):
        prepare_criteo_terabyte([days / "day_0.gz"], tmp_path / "x")


# ----------------------------------------------------------------------------
# Synthetic
# ----------------------------------------------------------------------------


def test_zipf_ids_power_law() -> None:
    rng = np.random.default_rng(0)
    ids = zipf_ids(rng, 200_000, 300_000_000, 1.05)
    assert ids.min() >= 0 and ids.max() < 300_000_000
    counts = np.bincount(ids[ids < 100])
    assert counts[0] > counts[1] > counts[3] > counts[10] > counts[50]
    assert 1.5 < counts[0] / counts[1] < 2.6  # ~ 2**1.05 for a continuous power law at k=1..2


def test_synthetic_terabyte_scale_meta(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    assert (
        cli_main(
            ["synthetic", str(out), "--rows", "20000", "--table-sizes", "criteo-terabyte", "--rows-per-file", "8000"]
        )
        == 0
    )
    meta = read_meta(out)
    assert [meta["table_sizes"][n] for n in CRITEO_SPARSE_FEATURES] == TABLE_SIZE_PRESETS["criteo-terabyte"]
    assert max(meta["table_sizes"].values()) > 200_000_000
    assert sum(meta["splits"][s]["rows"] for s in SPLITS) == 20000 == meta["rows_read"]
    assert meta["splits"]["train"]["files"] == [f"train/part-0000{i}.parquet" for i in range(3)]
    train = table(out, "train")
    for name in CRITEO_SPARSE_FEATURES:
        ids = train.column(name).to_numpy()
        assert ids.min() >= 0 and ids.max() < meta["table_sizes"][name]
        h = meta["id_histograms"][name]
        assert sum(h["rows_per_bucket"]) == meta["splits"]["train"]["rows"]
    again = tmp_path / "again"
    generate_dataset(again, 20000, TABLE_SIZE_PRESETS["criteo-terabyte"], rows_per_file=8000)
    assert all_bytes(out) == all_bytes(again)


def test_synthetic_tsv_is_valid_criteo(tmp_path: Path) -> None:
    src = tmp_path / "s.tsv"
    assert cli_main(["synthetic", str(src), "--format", "criteo-tsv", "--size-mb", "0.5", "--table-sizes", "1000"]) == 0
    assert 0.45e6 < src.stat().st_size <= 0.5e6
    r = prepare_criteo_kaggle(src, tmp_path / "o")
    assert r.rows_rejected == 0 and r.rows_read == src.read_bytes().count(b"\n")
    assert max(r.table_sizes.values()) <= 1001


# ----------------------------------------------------------------------------
# Atomicity, CLI
# ----------------------------------------------------------------------------


def test_crash_mid_run_leaves_no_output(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"

    def boom(self) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(writers.SplitWriter, "close", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_criteo_kaggle(CRITEO, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_all_datasets(tmp_path: Path, capsys) -> None:
    assert cli_main(["avazu", str(AVAZU), str(tmp_path / "av"), "--seed", "3", "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "Read 8,999 rows" in summary and "0 rejected" in summary and "21 embedding tables" in summary
    assert read_meta(tmp_path / "av")["split"]["seed"] == 3
    days = tmp_path / "days"
    lines = CRITEO.read_bytes().splitlines(keepends=True)
    days.mkdir()
    for d in range(2):
        (days / f"day_{d}").write_bytes(b"".join(lines[d * 100 : (d + 1) * 100]) + b"x\n")
    assert (
        cli_main(
            [
                "criteo-terabyte",
                str(days / "day_0"),
                str(days / "day_1"),
                str(tmp_path / "tb"),
                "--min-count",
                "2",
                "--progress",
            ]
        )
        == 0
    )
    cap = capsys.readouterr()
    assert "Read 202 rows" in cap.out and "2 rejected [column_count: 2]" in cap.out
    assert "rows/s" in cap.err  # progress bar
    assert cli_main(["criteo-terabyte", str(days / "day_0"), str(tmp_path / "tb2"), "--strict"]) == 2
    assert cli_main(["criteo-terabyte", str(days), str(tmp_path / "tb3"), "--strict"]) == 2
    assert "day_0:101" in capsys.readouterr().err
    assert cli_main(["synthetic", str(tmp_path / "s"), "--table-sizes", "1,2"]) == 2
