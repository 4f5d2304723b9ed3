"""Tests for data_prep: Criteo Kaggle TSV -> parquet dataset (format in data_prep/FORMAT.md)."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep import prepare_criteo_kaggle, read_meta, split_bounds
from data_prep.cli import main as cli_main
from data_prep.dataset_format import CRITEO_DENSE_FEATURES, CRITEO_SPARSE_FEATURES, META_FILE, parquet_schema

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_prep" / "samples" / "criteo_sample.tsv"
SAMPLE_ROWS = 9000


def raw_rows(path: Path = SAMPLE) -> List[List[str]]:
    return [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()]


def split_table(out: Path, split: str):
    meta = read_meta(out)
    files = [out / f for f in meta["splits"][split]["files"]]
    return pq.ParquetDataset(files).read() if files else None


@pytest.fixture(scope="module")
def sample_raw() -> List[List[str]]:
    return raw_rows()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "criteo"
    prepare_criteo_kaggle(SAMPLE, out)
    return out


# ----------------------------------------------------------------------------
# The real sample
# ----------------------------------------------------------------------------


def test_sample_counts_and_split_sizes(prepared: Path) -> None:
    meta = read_meta(prepared)
    assert meta["rows_read"] == SAMPLE_ROWS
    assert meta["rows_rejected"] == 0 and meta["rejects_file"] is None
    rows = {s: meta["splits"][s]["rows"] for s in ("train", "val", "test")}
    assert sum(rows.values()) + meta["rows_rejected"] == meta["rows_read"]
    chunks = np.array_split(np.arange(SAMPLE_ROWS), 7)
    test, val = np.array_split(chunks[6], 2)  # the reference DLRM's order: test first
    assert rows == {"train": sum(len(c) for c in chunks[:6]), "val": len(val), "test": len(test)}
    assert rows == {"train": 7715, "val": 642, "test": 643}
    for split, n in rows.items():
        assert split_table(prepared, split).num_rows == n


@pytest.mark.parametrize("n", [0, 1, 6, 7, 13, 14, 100, 9000, 9001])
def test_split_bounds_matches_array_split(n: int) -> None:
    chunks = np.array_split(np.arange(n), 7)
    test, val = np.array_split(chunks[6], 2)  # the reference DLRM's transformCriteoAdData: test first
    train = np.concatenate(chunks[:6])
    b = split_bounds(n)
    assert b["train"] == (0, len(train))
    assert b["test"] == (len(train), len(train) + len(test))
    assert b["val"] == (len(train) + len(test), n)


def test_meta_json_shape(prepared: Path) -> None:
    text = (prepared / META_FILE).read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta, sort_keys=True, indent=2) + "\n"
    assert meta["format_version"] == 2 and meta["dataset"] == "criteo-kaggle"
    assert meta["multi_hot"] == {} and set(meta["pooling"].values()) == {"sum"}
    assert meta["source"] == SAMPLE.name and meta["label"] == "label"
    assert meta["dense_features"] == [f"I{i}" for i in range(1, 14)]
    assert meta["sparse_features"] == [f"C{i}" for i in range(1, 27)]
    assert set(meta["table_sizes"]) == set(meta["sparse_features"])
    assert meta["splits"]["train"]["files"] == ["train/part-00000.parquet"]


def test_schema_and_value_ranges(prepared: Path) -> None:
    meta = read_meta(prepared)
    for split in ("train", "val", "test"):
        table = split_table(prepared, split)
        assert table.schema.remove_metadata().equals(parquet_schema(), check_metadata=False)
        assert set(table.column("label").to_numpy().tolist()) <= {0, 1}
        for name in CRITEO_SPARSE_FEATURES:
            ids = table.column(name).to_numpy()
            assert ids.min() >= 0 and ids.max() < meta["table_sizes"][name]
        for name in CRITEO_DENSE_FEATURES:
            assert table.column(name).to_numpy().min() >= 0.0


def test_first_row_matches_raw_line(prepared: Path, sample_raw) -> None:
    row = split_table(prepared, "train").slice(0, 1).to_pylist()[0]
    raw = sample_raw[0]
    assert row["label"] == int(raw[0])
    for i, name in enumerate(CRITEO_DENSE_FEATURES, start=1):
        x = max(int(raw[i]), 0) if raw[i] else 0
        assert row[name] == pytest.approx(np.float32(math.log1p(x)), rel=1e-6), name


def test_negative_and_empty_dense(prepared: Path, sample_raw) -> None:
    """Rows with a negative or empty raw dense value are stored as 0.0."""
    train = split_table(prepared, "train")
    checked = 0
    for r, raw in enumerate(sample_raw[:2000]):
        for i, name in enumerate(CRITEO_DENSE_FEATURES, start=1):
            if raw[i] == "" or raw[i].startswith("-"):
                assert train.column(name)[r].as_py() == 0.0
                checked += 1
    assert checked > 0


def _mapping(raw: List[List[str]], table, name: str, col: int) -> Dict[str, set]:
    ids = table.column(name).to_numpy()
    out: Dict[str, set] = {}
    for r, row in enumerate(raw):
        out.setdefault(row[col], set()).add(int(ids[r]))
    return out


@pytest.mark.parametrize("name", ["C1", "C3", "C22"])
def test_vocab_is_consistent_and_frequency_ordered(prepared: Path, sample_raw, name: str) -> None:
    col = 14 + CRITEO_SPARSE_FEATURES.index(name)
    bounds = split_bounds(SAMPLE_ROWS)
    train_raw = sample_raw[: bounds["train"][1]]
    mapping = _mapping(train_raw, split_table(prepared, "train"), name, col)
    # min_count=1: every train value has exactly one non-zero id, distinct across values.
    assert all(len(ids) == 1 and 0 not in ids for ids in mapping.values())
    id_of = {v: next(iter(ids)) for v, ids in mapping.items()}
    assert sorted(id_of.values()) == list(range(1, len(id_of) + 1))
    assert read_meta(prepared)["table_sizes"][name] == len(id_of) + 1
    counts = Counter(row[col] for row in train_raw)
    expected_order = sorted(counts, key=lambda v: (-counts[v], v.encode()))
    assert [id_of[v] for v in expected_order] == list(range(1, len(id_of) + 1))


def test_empty_string_is_an_ordinary_value(prepared: Path, sample_raw) -> None:
    name, col = "C22", 14 + 21  # C22 is often empty in Criteo
    train_raw = sample_raw[: split_bounds(SAMPLE_ROWS)["train"][1]]
    assert any(row[col] == "" for row in train_raw)
    mapping = _mapping(train_raw, split_table(prepared, "train"), name, col)
    assert len(mapping[""]) == 1 and 0 not in mapping[""]


def test_val_values_unseen_in_train_get_id_zero(prepared: Path, sample_raw) -> None:
    b = split_bounds(SAMPLE_ROWS)
    train_raw = sample_raw[: b["train"][1]]
    val_raw = sample_raw[b["val"][0] : b["val"][1]]
    train_tab, val_tab = split_table(prepared, "train"), split_table(prepared, "val")
    unseen = seen = 0
    for name in ("C3", "C4", "C12"):
        col = 14 + CRITEO_SPARSE_FEATURES.index(name)
        id_of = {v: next(iter(ids)) for v, ids in _mapping(train_raw, train_tab, name, col).items()}
        val_ids = val_tab.column(name).to_numpy()
        for r, row in enumerate(val_raw):
            if row[col] in id_of:
                assert val_ids[r] == id_of[row[col]]
                seen += 1
            else:
                assert val_ids[r] == 0
                unseen += 1
    assert unseen > 0 and seen > 0


def test_min_count_maps_rare_to_zero(prepared: Path, tmp_path: Path, sample_raw) -> None:
    out = tmp_path / "mc"
    prepare_criteo_kaggle(SAMPLE, out, min_count=5)
    meta, base = read_meta(out), read_meta(prepared)
    assert meta["min_count"] == 5
    train_raw = sample_raw[: split_bounds(SAMPLE_ROWS)["train"][1]]
    train = split_table(out, "train")
    shrunk = 0
    for j, name in enumerate(CRITEO_SPARSE_FEATURES):
        counts = Counter(row[14 + j] for row in train_raw)
        frequent = {v for v, c in counts.items() if c >= 5}
        assert meta["table_sizes"][name] == len(frequent) + 1
        shrunk += meta["table_sizes"][name] < base["table_sizes"][name]
        ids = train.column(name).to_numpy()
        is_rare = np.array([row[14 + j] not in frequent for row in train_raw])
        assert np.all((ids == 0) == is_rare), name
    assert shrunk > 0


def test_deterministic_output(prepared: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    prepare_criteo_kaggle(SAMPLE, again)
    files = sorted(p.relative_to(prepared) for p in prepared.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (prepared / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_rows_per_file_bounds_part_files(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "small_parts"
    prepare_criteo_kaggle(SAMPLE, out, rows_per_file=2000, row_group_rows=500)
    meta = read_meta(out)
    assert meta["splits"]["train"]["files"] == [f"train/part-{i:05d}.parquet" for i in range(4)]
    for rel in meta["splits"]["train"]["files"]:
        md = pq.ParquetFile(out / rel).metadata
        assert md.num_rows <= 2000 and all(md.row_group(g).num_rows <= 500 for g in range(md.num_row_groups))
    assert split_table(out, "train").equals(split_table(prepared, "train"))


# ----------------------------------------------------------------------------
# Malformed input, strictness, compression, line endings
# ----------------------------------------------------------------------------


def _good_lines(n: int) -> List[str]:
    return SAMPLE.read_text().splitlines()[:n]


def _with(fields: List[str], col: int, value: str) -> str:
    f = list(fields)
    f[col] = value
    return "\t".join(f)


@pytest.fixture()
def messy_tsv(tmp_path: Path):
    """Good lines with each kind of malformed line in between; returns (path, bad line numbers)."""
    good = _good_lines(20)
    f = good[0].split("\t")
    lines = [
        "\t".join(f[:39]),  # 1: too few columns (first line: must not break parsing)
        *good[:5],  # 2-6
        _with(f, 3, "1.5"),  # 7: non-integer dense I3
        _with(f, 13 + 6, "zz34abcd"),  # 8: non-hex C6 (Ck is column 13 + k)
        _with(f, 13 + 7, "abc"),  # 9: wrong length C7
        _with(f, 0, "2"),  # 10: label not 0/1
        "",  # 11: empty line
        good[0] + "\textra",  # 12: too many columns
        _with(f, 13 + 8, "ABCDEF12"),  # 13: uppercase hex C8
        *good[5:20],  # 14-28
    ]
    path = tmp_path / "messy.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path, [1, 7, 8, 9, 10, 11, 12, 13]


def test_malformed_lines_are_rejected_and_reported(messy_tsv, tmp_path: Path) -> None:
    src, bad = messy_tsv
    out = tmp_path / "out"
    result = prepare_criteo_kaggle(src, out)
    meta = read_meta(out)
    assert meta["rows_read"] == 28 and meta["rows_rejected"] == len(bad) == result.rows_rejected
    assert sum(meta["splits"][s]["rows"] for s in ("train", "val", "test")) == 20
    assert meta["rejects_file"] == "rejects.tsv"
    # Split is by accepted-row index: 20 accepted rows -> 3,3,3,3,3,3,2 chunks -> 18/1/1.
    assert [meta["splits"][s]["rows"] for s in ("train", "val", "test")] == [18, 1, 1]
    src_lines = src.read_text().split("\n")
    records = (out / "rejects.tsv").read_text().splitlines()
    assert records[0] == "file\tline\treason\traw"
    assert all(r.split("\t", 1)[0] == src.name for r in records[1:])
    parsed = [r.split("\t", 3)[1:] for r in records[1:]]
    assert [int(p[0]) for p in parsed] == bad
    for line_no, reason, raw in parsed:
        assert raw == src_lines[int(line_no) - 1]
    reasons = {int(p[0]): p[1] for p in parsed}
    assert "40" in reasons[1] and "39" in reasons[1]
    assert "I3" in reasons[7] and "1.5" in reasons[7]
    assert "C6" in reasons[8] and "C7" in reasons[9] and "C8" in reasons[13]
    assert "label" in reasons[10]
    assert reasons[11] == "empty line"
    assert "41" in reasons[12]
    # Accepted rows are the good lines, in order.
    train = split_table(out, "train")
    assert train.column("label").to_pylist() == [int(l.split("\t")[0]) for l in _good_lines(18)]


def test_non_utf8_and_control_bytes_are_rejected_verbatim(tmp_path: Path) -> None:
    good = [l.encode() for l in _good_lines(10)]
    f = good[0].split(b"\t")
    non_utf8 = b"\t".join(f[:19] + [b"\xff\xfeabcd12"] + f[20:])
    control = b"\t".join(f[:5] + [b"1\x012"] + f[6:])
    src = tmp_path / "bytes.tsv"
    src.write_bytes(b"\n".join(good[:3] + [non_utf8, control] + good[3:]) + b"\n")
    result = prepare_criteo_kaggle(src, tmp_path / "out")
    assert (result.rows_read, result.rows_rejected) == (12, 2)
    records = (tmp_path / "out" / "rejects.tsv").read_bytes().split(b"\n")[1:-1]
    assert [r.split(b"\t", 3)[1] for r in records] == [b"4", b"5"]
    assert [r.split(b"\t", 3)[3] for r in records] == [non_utf8, control]
    assert b"C6" in records[0] and b"\\xff" in records[0]


def test_strict_raises_with_file_and_line(messy_tsv, tmp_path: Path) -> None:
    src, _ = messy_tsv
    out = tmp_path / "strict"
    with pytest.raises(ValueError, match=rf"{src.name}:1: .*40"):
        prepare_criteo_kaggle(src, out, strict=True)
    assert not out.exists()
    assert not list(tmp_path.glob("strict.tmp-*"))
    # A later first bad line is named correctly too.
    lines = _good_lines(4)
    lines[2] = _with(lines[2].split("\t"), 5, "x")
    src2 = tmp_path / "one_bad.tsv"
    src2.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"one_bad\.tsv:3: .*I5"):
        prepare_criteo_kaggle(src2, tmp_path / "strict2", strict=True)


def test_missing_input_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tsv"
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        prepare_criteo_kaggle(missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gzip_crlf_and_no_trailing_newline(tmp_path: Path) -> None:
    lines = _good_lines(30)
    plain = tmp_path / "plain.tsv"
    plain.write_text("\n".join(lines) + "\n")
    crlf = tmp_path / "crlf.tsv"
    crlf.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    no_nl = tmp_path / "no_nl.tsv"
    no_nl.write_text("\n".join(lines))
    gz = tmp_path / "plain.tsv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    outs = {}
    for src in (plain, crlf, no_nl, gz):
        out = tmp_path / f"out_{src.name}"
        result = prepare_criteo_kaggle(src, out)
        assert result.rows_read == 30 and result.rows_rejected == 0, src.name
        outs[src.name] = out
    ref = outs["plain.tsv"]
    for out in outs.values():
        assert read_meta(out)["table_sizes"] == read_meta(ref)["table_sizes"]
        for split in ("train", "val", "test"):
            assert split_table(out, split).equals(split_table(ref, split))


def test_empty_input_gives_empty_splits(tmp_path: Path) -> None:
    src = tmp_path / "empty.tsv"
    src.write_text("")
    result = prepare_criteo_kaggle(src, tmp_path / "out")
    assert result.rows_read == 0 and result.split_rows == {"train": 0, "val": 0, "test": 0}
    assert set(result.table_sizes.values()) == {1}
    assert read_meta(tmp_path / "out")["splits"]["train"]["files"] == []


# ----------------------------------------------------------------------------
# Output directory handling
# ----------------------------------------------------------------------------


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "s.tsv"
    src.write_text("\n".join(_good_lines(14)) + "\n")
    out = tmp_path / "out"
    prepare_criteo_kaggle(src, out)
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_criteo_kaggle(src, out)
    src.write_text("\n".join(_good_lines(21)) + "\n")
    prepare_criteo_kaggle(src, out, overwrite=True)
    assert read_meta(out)["rows_read"] == 21
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s.tsv"]  # no tmp/old leftovers


def test_overwrite_refuses_non_dataset_directory(tmp_path: Path) -> None:
    src = tmp_path / "s.tsv"
    src.write_text("\n".join(_good_lines(7)) + "\n")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="meta.json"):
        prepare_criteo_kaggle(src, precious, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_read_meta_validation(prepared: Path, tmp_path: Path) -> None:
    meta = json.loads((prepared / META_FILE).read_text())
    bad = tmp_path / "meta.json"
    bad.write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(ValueError, match="format_version"):
        read_meta(bad)
    bad.write_text(json.dumps({k: v for k, v in meta.items() if k != "table_sizes"}))
    with pytest.raises(ValueError, match="table_sizes"):
        read_meta(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_meta(tmp_path / "nowhere")


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------


def test_cli_summary_and_errors(messy_tsv, tmp_path: Path, capsys) -> None:
    src, bad = messy_tsv
    out = tmp_path / "cli_out"
    assert cli_main(["criteo-kaggle", str(src), str(out), "--min-count", "2", "--rows-per-file", "10"]) == 0
    summary = capsys.readouterr().out
    assert "28 rows" in summary and f"{len(bad)} rejected" in summary and str(out) in summary
    assert "18 train / 1 val / 1 test" in summary
    assert read_meta(out)["splits"]["train"]["files"] == ["train/part-00000.parquet", "train/part-00001.parquet"]

    assert cli_main(["criteo-kaggle", str(tmp_path / "missing.tsv"), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "missing.tsv" in err and "Traceback" not in err
    assert cli_main(["criteo-kaggle", str(src), str(out)]) == 2  # exists, no --overwrite
    assert cli_main(["criteo-kaggle", str(src), str(tmp_path / "o3"), "--strict"]) == 2
    assert ":1:" in capsys.readouterr().err


def test_python_m_cli_and_no_torch_import(tmp_path: Path) -> None:
    """`python -m data_prep.cli` works and data_prep never imports torch."""
    code = (
        "import sys, runpy; sys.argv = ['mlet-prep', 'criteo-kaggle', sys.argv[1], sys.argv[2]];"
        "import data_prep, data_prep.cli; assert 'torch' not in sys.modules, 'data_prep imported torch';"
        "runpy.run_module('data_prep.cli', run_name='__main__')"
    )
    missing = tmp_path / "missing.tsv"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(missing), str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert "missing.tsv" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.cli", "criteo-kaggle", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--min-count" in proc.stdout
