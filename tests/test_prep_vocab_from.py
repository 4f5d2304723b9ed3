"""mlet-prep --vocab-from DIR (data_prep/vocab_from.py): day N+1 encoded with day N's vocabulary gives
the same id to every value day N's dataset gave an id, the OOV id 0 to values it never saw, and
the same table sizes; the new dataset carries the vocabulary; a vocabulary that cannot be used is
one line, exit 2, nothing published."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.avazu import AVAZU_HEADER
from data_prep.cli import main as cli_main
from data_prep.dataset_format import read_meta
from data_prep.vocabulary import Vocabulary

SAMPLES = Path(__file__).resolve().parents[1] / "data_prep" / "samples"
CRITEO_NAMES = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]


def _days(tmp_path: Path) -> List[Path]:
    """The Criteo sample cut into two "days" of 4,500 lines each."""
    lines = (SAMPLES / "criteo_sample.tsv").read_bytes().splitlines(keepends=True)
    days = []
    for d, part in enumerate((lines[:4500], lines[4500:])):
        days.append(tmp_path / f"day{d}.tsv")
        days[-1].write_bytes(b"".join(part))
    return days


def _prep(src: Path, out: Path, *flags: str) -> Dict:
    assert cli_main(["criteo-kaggle", str(src), str(out), "--no-progress", "--workers", "1", *flags]) == 0
    return read_meta(out)


_INPUT_ORDER = {"criteo-kaggle": ("train", "test", "val"), "criteo-terabyte": ("train", "val", "test")}


def _decoded(src: Union[Path, List[Path]], ds: Path) -> Dict[str, List]:
    """(raw value, id) of every row and feature: the Kaggle and Terabyte splits keep input order,
    so the rows of the splits concatenated are the input lines (no malformed line here): train,
    test, val for Kaggle (the reference DLRM split holds test first in the last chunk), train, val,
    test for Terabyte (the last day's first half is val, as MLPerf and TorchRec cut it)."""
    meta = read_meta(ds)
    assert meta["rows_rejected"] == 0
    table = pa.concat_tables(
        [pq.read_table(ds / f) for s in _INPUT_ORDER[meta["dataset"]] for f in meta["splits"][s]["files"]]
    )
    rows = [line.split("\t") for p in (src if isinstance(src, list) else [src]) for line in p.read_text().splitlines()]
    return {
        name: list(zip((r[CRITEO_NAMES.index(name)] for r in rows), table.column(name).to_pylist()))
        for name in meta["sparse_features"]
    }


def _id_mismatches(day0: Dict[str, List], day1: Dict[str, List], hashed: Sequence[str] = ()) -> Dict[str, int]:
    """Per feature, day-1 rows whose id is not the id day 0's dataset gave that value: for an exact
    feature 0 (OOV) if day 0 gave it none (unseen in day 0's train split); a hashed feature has no
    OOV id (a new value hashes into the same table), so only values day 0 had are compared."""
    out = {}
    for name, pairs in day1.items():
        known = dict(day0[name])
        out[name] = sum(1 for value, i in pairs if (value in known or name not in hashed) and i != known.get(value, 0))
    return out


def test_day1_with_day0_vocabulary_keeps_ids_and_gives_new_values_the_oov_id(tmp_path: Path) -> None:
    day0, day1 = _days(tmp_path)
    meta0 = _prep(day0, tmp_path / "d0", "--hash-size", "1000")  # some features hashed: both kinds exercised
    meta1 = _prep(day1, tmp_path / "d1", "--vocab-from", str(tmp_path / "d0"))
    ids0, ids1 = _decoded(day0, tmp_path / "d0"), _decoded(day1, tmp_path / "d1")

    exact = [n for n in meta0["sparse_features"] if not meta0["id_histograms"][n]["hashed"]]
    hashed = sorted(set(meta0["sparse_features"]) - set(exact))
    assert exact and hashed
    assert _id_mismatches(ids0, ids1, hashed) == {name: 0 for name in meta1["sparse_features"]}
    # the check above is not vacuous: day 1 has values day 0 gave ids to, and values it never saw
    known = {n: dict(ids0[n]) for n in exact}
    shared = sum(1 for n in exact for v, i in ids1[n] if known[n].get(v, 0) != 0)
    unseen = sum(1 for n in exact for v, i in ids1[n] if v not in known[n])
    assert shared > 1000 and unseen > 100
    assert all(i == 0 for n in exact for v, i in ids1[n] if v not in known[n])

    assert meta1["table_sizes"] == meta0["table_sizes"]  # the day-0 model can be fine-tuned on day 1
    assert sorted(meta1["hashed_features"]) == hashed and meta1["min_count"] == 1 and meta1["hash_size"] == 1000
    origin = meta1["vocabulary"]["from"]
    assert origin["dir"] == str((tmp_path / "d0").resolve()) and origin["sources"] == ["day0.tsv"]
    assert origin["meta_sha256"] and meta1["vocabulary"]["features"] == meta0["vocabulary"]["features"]
    for name in exact:  # self-contained: the vocabulary files are copied, byte for byte
        assert (tmp_path / "d1" / "vocab" / f"{name}.parquet").read_bytes() == (
            tmp_path / "d0" / "vocab" / f"{name}.parquet"
        ).read_bytes()

    # control: a fresh vocabulary for day 1 renumbers the values, and this test's check sees it
    _prep(day1, tmp_path / "fresh", "--hash-size", "1000")
    fresh = _id_mismatches(ids0, _decoded(day1, tmp_path / "fresh"), hashed)
    assert all(fresh[n] > 0 for n in exact if len(known[n]) > 20), fresh


def test_terabyte_days_with_a_kaggle_vocabulary(tmp_path: Path) -> None:
    """criteo-terabyte with --vocab-from (its own split policy; the Criteo features match, so a
    Kaggle-prepared vocabulary is accepted): the same id rule on two day files."""
    day0, day1 = _days(tmp_path)
    half = day1.read_bytes().splitlines(keepends=True)
    days = [tmp_path / "day_0", tmp_path / "day_1"]
    days[0].write_bytes(b"".join(half[:2000]))
    days[1].write_bytes(b"".join(half[2000:]))
    _prep(day0, tmp_path / "d0")
    assert (
        cli_main(
            [
                "criteo-terabyte",
                *map(str, days),
                str(tmp_path / "tb"),
                "--no-progress",
                "--workers",
                "1",
                "--vocab-from",
                str(tmp_path / "d0"),
            ]
        )
        == 0
    )
    meta = read_meta(tmp_path / "tb")
    assert meta["dataset"] == "criteo-terabyte" and meta["vocabulary"]["from"]["dataset"] == "criteo-kaggle"
    assert meta["table_sizes"] == read_meta(tmp_path / "d0")["table_sizes"]
    assert _id_mismatches(_decoded(day0, tmp_path / "d0"), _decoded(days, tmp_path / "tb")) == {
        name: 0 for name in meta["sparse_features"]
    }


def test_the_new_dataset_is_self_contained(tmp_path: Path) -> None:
    """Day 1's dataset serves as the vocabulary of day 2 and loads for raw encoding: same ids."""
    day0, day1 = _days(tmp_path)
    _prep(day0, tmp_path / "d0")
    _prep(day1, tmp_path / "d1", "--vocab-from", str(tmp_path / "d0"))
    _prep(day1, tmp_path / "d2", "--vocab-from", str(tmp_path / "d1"))
    pairs = _decoded(day1, tmp_path / "d1")
    assert _decoded(day1, tmp_path / "d2") == pairs
    vocab = Vocabulary.load(tmp_path / "d1")
    for name, rows in pairs.items():
        assert vocab.encode(name, [v for v, _ in rows]).ids.tolist() == [i for _, i in rows], name


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_write_the_same_bytes_with_vocab_from(tmp_path: Path, workers: int) -> None:
    """Avazu (token values, a split by line number) halves: --workers N equals one process."""
    lines = (SAMPLES / "avazu_sample.csv").read_text().splitlines(keepends=True)
    (tmp_path / "a0.csv").write_text("".join(lines[:4000]))
    (tmp_path / "a1.csv").write_text(lines[0] + "".join(lines[4000:]))
    base = ["--no-progress", "--block-mb", "1"]
    assert cli_main(["avazu", str(tmp_path / "a0.csv"), str(tmp_path / "v0"), *base, "--workers", "1"]) == 0
    outs = []
    for w in (1, workers):
        outs.append(tmp_path / f"w{w}")
        assert (
            cli_main(
                [
                    "avazu",
                    str(tmp_path / "a1.csv"),
                    str(outs[-1]),
                    *base,
                    "--workers",
                    str(w),
                    "--vocab-from",
                    str(tmp_path / "v0"),
                ]
            )
            == 0
        )
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    assert Path("vocab/device_ip.parquet") in files
    for f in files:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    assert read_meta(outs[0])["table_sizes"] == read_meta(tmp_path / "v0")["table_sizes"]


def _rewrite_vocab(path: Path, keys: np.ndarray, ids: np.ndarray) -> None:
    table = pq.read_table(path)
    pq.write_table(table.set_column(1, "key", pa.array(keys)).set_column(2, "id", pa.array(ids)), path)


def _break(kind: str, vocab_dir: Path) -> str:
    """Damage a copy of a Criteo dataset's vocabulary; the words the error line must contain."""
    c3 = vocab_dir / "vocab" / "C3.parquet"
    if kind == "missing_file":
        c3.unlink()
        return "vocabulary file not found"
    if kind == "truncated_file":
        c3.write_bytes(c3.read_bytes()[:200])
        return "cannot read"
    t = pq.read_table(c3)
    keys, ids = t.column("key").to_numpy(), t.column("id").to_numpy()
    if kind == "unsorted_keys":
        _rewrite_vocab(c3, keys[::-1].copy(), ids[::-1].copy())
        return "strictly ascending"
    if kind == "duplicate_ids":
        ids = ids.copy()
        ids[1] = ids[0]
        _rewrite_vocab(c3, keys, ids)
        return "ids distinct"
    if kind == "id_past_table":
        ids = ids.copy()
        ids[0] = 10**9
        _rewrite_vocab(c3, keys, ids)
        return "ids distinct"
    if kind == "values_count":
        meta = json.loads((vocab_dir / "meta.json").read_text())
        meta["vocabulary"]["features"]["C3"]["values"] += 1
        (vocab_dir / "meta.json").write_text(json.dumps(meta))
        return "meta.json lists"
    if kind == "no_vocabulary":
        meta = json.loads((vocab_dir / "meta.json").read_text())
        del meta["vocabulary"]
        (vocab_dir / "meta.json").write_text(json.dumps(meta))
        return "has no vocabulary"
    if kind == "escaping_path":
        meta = json.loads((vocab_dir / "meta.json").read_text())
        meta["vocabulary"]["features"]["C3"]["file"] = "../elsewhere.parquet"
        (vocab_dir / "meta.json").write_text(json.dumps(meta))
        return "expected 'vocab/C3.parquet'"
    if kind == "not_a_dataset":
        (vocab_dir / "meta.json").unlink()
        return "not a prepared dataset"
    if kind == "raw_file":  # the raw file instead of the dataset prepared from it
        (vocab_dir / "raw.tsv").write_bytes((SAMPLES / "criteo_sample.tsv").read_bytes()[:5000])
        return "a raw data file"
    raise AssertionError(kind)


BROKEN = [
    "missing_file",
    "truncated_file",
    "unsorted_keys",
    "duplicate_ids",
    "id_past_table",
    "values_count",
    "no_vocabulary",
    "escaping_path",
    "not_a_dataset",
    "raw_file",
]


@pytest.fixture(scope="module")
def day0_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vocab0")
    _prep(_days(root)[0], root / "d0")
    return root


def _refused(argv: List[str], out: Path, capsys: pytest.CaptureFixture) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlet-prep: error:"), err
    assert not out.exists() and not list(out.parent.glob(f"{out.name}.tmp-*"))  # nothing published or left
    return err[0]


@pytest.mark.parametrize("kind", BROKEN)
def test_damaged_vocabulary_is_one_line_and_nothing_published(
    tmp_path: Path, day0_dataset: Path, kind: str, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(day0_dataset / "d0", broken)
    words = _break(kind, broken)
    out = tmp_path / "out"
    given = broken / "raw.tsv" if kind == "raw_file" else broken
    err = _refused(
        [
            "criteo-kaggle",
            str(day0_dataset / "day1.tsv"),
            str(out),
            "--no-progress",
            "--workers",
            "1",
            "--vocab-from",
            str(given),
        ],
        out,
        capsys,
    )
    assert "--vocab-from" in err and words in err, err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_vocabulary_of_another_dataset_kind_is_refused(
    tmp_path: Path, day0_dataset: Path, workers: str, capsys: pytest.CaptureFixture
) -> None:
    avazu = tmp_path / "avazu"
    assert cli_main(["avazu", str(SAMPLES / "avazu_sample.csv"), str(avazu), "--no-progress", "--workers", "1"]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    err = _refused(
        [
            "criteo-kaggle",
            str(day0_dataset / "day1.tsv"),
            str(out),
            "--no-progress",
            "--workers",
            workers,
            "--vocab-from",
            str(avazu),
        ],
        out,
        capsys,
    )
    assert "a vocabulary of 'avazu' data" in err and "not of 'criteo-kaggle' data" in err, err
    header = AVAZU_HEADER + "\n"
    (tmp_path / "a.csv").write_text(header + (SAMPLES / "avazu_sample.csv").read_text().split("\n", 1)[1])
    err = _refused(
        [
            "avazu",
            str(tmp_path / "a.csv"),
            str(out),
            "--no-progress",
            "--workers",
            workers,
            "--vocab-from",
            str(day0_dataset / "d0"),
        ],
        out,
        capsys,
    )
    assert "a vocabulary of 'criteo-kaggle' data" in err, err


def test_min_count_or_hash_size_with_vocab_from_is_refused(
    tmp_path: Path, day0_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    for flags in (["--min-count", "2"], ["--hash-size", "100"]):
        err = _refused(
            [
                "criteo-kaggle",
                str(day0_dataset / "day1.tsv"),
                str(out),
                "--no-progress",
                *flags,
                "--vocab-from",
                str(day0_dataset / "d0"),
            ],
            out,
            capsys,
        )
        assert "cannot be combined" in err, err
