"""The converters against the peers' own tools, run on the shipped sample (data_prep/samples).

TorchRec's Criteo tools are installed, so they are RUN here, not imitated: its npy writer
(``BinaryCriteoUtils.tsv_to_npys``, as ``npy_preproc_criteo.py`` calls it, day mode and
``criteo_kaggle`` mode), ``get_shape_from_npy``, ``sparse_to_contiguous`` and its in-memory reader
``InMemoryBinaryCriteoIterDataPipe`` with ``hashes`` (what TorchRec trains on). Our converted rows
are compared with what that reader yields, row by row.

The reference DLRM (facebookresearch/dlrm) is not installed; its output is a fixture with the
dtypes and layout its source writes: ``data_utils.py`` ``processCriteoAdData`` fills
``X_cat_t = np.zeros(...)`` (numpy's default float64) and saves ``X_cat`` with
``np.savez_compressed``; ``getCriteoAdData``'s ``process_one_file`` keeps ``X_int`` and ``y`` as
``"i4"``; ``concatCriteoAdData`` writes ``<name>_processed.npz`` (X_cat, X_int, y, counts)
compressed; ``getCriteoAdData`` cuts Kaggle's train.txt into 7 "days" (``divmod`` with the first
``extras`` days one row longer: numpy.array_split) and ``transformCriteoAdData`` splits the last
``test, val = np.array_split(last, 2)``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.dataset_format import CRITEO_SPARSE_FEATURES, read_meta
from data_prep.generate.synthetic import TABLE_SIZE_PRESETS

torchrec_criteo = pytest.importorskip("torchrec.datasets.criteo")
BinaryCriteoUtils = torchrec_criteo.BinaryCriteoUtils
InMemoryBinaryCriteoIterDataPipe = torchrec_criteo.InMemoryBinaryCriteoIterDataPipe

BIN = Path(sys.executable).parent
SAMPLE = Path(__file__).resolve().parents[1] / "data_prep" / "samples" / "criteo_sample.tsv"
DAY_ROWS = [4000, 3625, 1375]  # the sample cut into three "days": 7,625 train, 688 val, 687 test
MLPERF_SIZES = TABLE_SIZE_PRESETS["criteo-kaggle"]  # per-feature sizes, as --num_embeddings_per_feature


def prep(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mlet-prep"), *argv], capture_output=True, text=True, timeout=300)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-2000:]


def assert_refused(proc: subprocess.CompletedProcess, message: str, out: Path) -> None:
    """Exit != 0, stderr one ``error:`` line matching ``message``, no traceback, nothing published."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and "error:" in lines[0] and re.search(message, lines[0]), lines
    assert not out.exists() and not (out / "meta.json").exists()


def tsv_to_npys(src: Path, out_dir: Path, name: str, dataset: str = "criteo_1tb") -> None:
    parts = [str(out_dir / f"{name}_{p}.npy") for p in ("dense", "sparse", "labels")]
    BinaryCriteoUtils.tsv_to_npys(str(src), *parts, dataset_name=dataset)


@pytest.fixture(scope="module")
def torchrec_days(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample cut into day files, each through TorchRec's tsv_to_npys (raw 32-bit ids)."""
    root = tmp_path_factory.mktemp("torchrec")
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    assert len(lines) == sum(DAY_ROWS)
    npy = root / "npy"
    npy.mkdir()
    start = 0
    for n, rows in enumerate(DAY_ROWS):
        (root / f"day_{n}").write_bytes(b"".join(lines[start : start + rows]))
        tsv_to_npys(root / f"day_{n}", npy, f"day_{n}")
        start += rows
    return npy


@pytest.fixture(scope="module")
def torchrec_kaggle() -> Iterator[Path]:
    """The sample as Kaggle's train.txt through tsv_to_npys(dataset_name="criteo_kaggle"). Not
    under pytest's tmp dir: tsv_to_npys gives every row the fake label -1 when "test" is anywhere
    in the input path, and pytest's paths contain "pytest"."""
    with tempfile.TemporaryDirectory(prefix="mlet-kaggle-") as tmp:
        root = Path(tmp)
        assert "test" not in str(root)
        (root / "train.txt").write_bytes(SAMPLE.read_bytes())
        npy = root / "npy"
        npy.mkdir()
        tsv_to_npys(root / "train.txt", npy, "train", "criteo_kaggle")
        yield npy


def reader_rows(stage: str, npy: Path, names: Sequence[str], hashes: List[int] = None) -> Dict[str, np.ndarray]:
    """Every row TorchRec's in-memory reader yields for ``stage`` (one rank, in order)."""
    paths = [[str(npy / f"{n}_{p}.npy") for n in names] for p in ("dense", "sparse", "labels")]
    pipe = InMemoryBinaryCriteoIterDataPipe(stage, *paths, batch_size=1000, rank=0, world_size=1, hashes=hashes)
    dense, ids, labels = [], [], []
    for batch in pipe:
        rows = batch.dense_features.shape[0]
        dense.append(batch.dense_features.numpy())
        ids.append(batch.sparse_features.values().numpy().reshape(len(CRITEO_SPARSE_FEATURES), rows).T)
        labels.append(batch.labels.numpy())
    return {"dense": np.concatenate(dense), "ids": np.concatenate(ids), "labels": np.concatenate(labels)}


def our_rows(ds: Path, splits: Sequence[str]) -> Dict[str, np.ndarray]:
    meta = read_meta(ds)
    table = pa.concat_tables([pq.read_table(ds / f) for s in splits for f in meta["splits"][s]["files"]])
    return {
        "dense": np.stack([table.column(f"I{j + 1}").to_numpy() for j in range(13)], axis=1),
        "ids": np.stack([table.column(c).to_numpy() for c in CRITEO_SPARSE_FEATURES], axis=1),
        "labels": table.column("label").to_numpy(),
    }


def mismatched_rows(ours: Dict[str, np.ndarray], theirs: Dict[str, np.ndarray]) -> int:
    assert len(ours["labels"]) == len(theirs["labels"])
    bad = (ours["dense"] != theirs["dense"]).any(axis=1) | (ours["ids"] != theirs["ids"]).any(axis=1)
    return int((bad | (ours["labels"] != theirs["labels"])).sum())


DAY_STAGES = {"train": ["day_0", "day_1"], "val": ["day_2"], "test": ["day_2"]}


@pytest.mark.parametrize(
    "flags, hashes",
    [
        (["--max-ind-range", "100000"], [100000] * 26),
        (["--num-embeddings-per-feature", ",".join(map(str, MLPERF_SIZES))], MLPERF_SIZES),
    ],
)
def test_raw_day_files_hashed_as_torchrecs_reader(
    torchrec_days: Path, tmp_path: Path, flags: List[str], hashes: List[int]
) -> None:
    out = tmp_path / "ds"
    assert_ok(prep("from-torchrec-npy", str(torchrec_days), str(out), *flags))
    meta = read_meta(out)
    assert meta["rows_per_source"] == {
        f"day_{n}": BinaryCriteoUtils.get_shape_from_npy(str(torchrec_days / f"day_{n}_dense.npy"))[0] for n in range(3)
    }
    assert [meta["table_sizes"][c] for c in CRITEO_SPARSE_FEATURES] == hashes
    for split, names in DAY_STAGES.items():
        theirs = reader_rows(split, torchrec_days, names, hashes)
        assert mismatched_rows(our_rows(out, [split]), theirs) == 0, split
    assert meta["splits"]["val"]["rows"] == 688 and meta["splits"]["test"]["rows"] == 687


def test_contiguous_day_files_copied(torchrec_days: Path, tmp_path: Path) -> None:
    """sparse_to_contiguous's output needs no hashing: ids copied, tables max id + 1."""
    contig = tmp_path / "contig"
    contig.mkdir()
    BinaryCriteoUtils.sparse_to_contiguous(
        [str(torchrec_days / f"day_{n}_sparse.npy") for n in range(3)], str(contig), frequency_threshold=3
    )
    for n in range(3):
        (contig / f"day_{n}_sparse_contig_freq.npy").rename(contig / f"day_{n}_sparse.npy")
        for part in ("dense", "labels"):
            (contig / f"day_{n}_{part}.npy").symlink_to(torchrec_days / f"day_{n}_{part}.npy")
    out = tmp_path / "ds"
    assert_ok(prep("from-torchrec-npy", str(contig), str(out)))
    for split, names in DAY_STAGES.items():
        assert mismatched_rows(our_rows(out, [split]), reader_rows(split, contig, names)) == 0, split


@pytest.mark.parametrize("flags", [[], ["--table-sizes", "criteo-kaggle"]])
def test_unhashed_raw_ids_are_refused_with_the_flag_named(
    torchrec_days: Path, tmp_path: Path, flags: List[str]
) -> None:
    out = tmp_path / "ds"
    assert_refused(
        prep("from-torchrec-npy", str(torchrec_days), str(out), *flags),
        r"feature C\d+: id \d+ .*--max-ind-range N or --num-embeddings-per-feature",
        out,
    )


def test_two_flags_setting_the_table_sizes_are_refused(torchrec_days: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert_refused(
        prep("from-torchrec-npy", str(torchrec_days), str(out), "--max-ind-range", "10", "--table-sizes", "5"),
        r"--max-ind-range and --table-sizes both set the table sizes",
        out,
    )


def test_kaggle_mode_rows_match_torchrecs_reader_and_split_as_criteo_kaggle(
    torchrec_kaggle: Path, tmp_path: Path
) -> None:
    """Kaggle mode: every row equals what TorchRec's reader trains on (stage "train": the whole
    train_*.npy); the splits are criteo-kaggle's (7 chunks, last: test first), not TorchRec's Kaggle
    loader's (it trains on the whole file and evaluates on its second half, overlapping)."""
    out, tsv = tmp_path / "ds", tmp_path / "tsv"
    assert_ok(prep("from-torchrec-npy", str(torchrec_kaggle), str(out), "--max-ind-range", "50000"))
    theirs = reader_rows("train", torchrec_kaggle, ["train"], [50000] * 26)
    assert mismatched_rows(our_rows(out, ["train", "test", "val"]), theirs) == 0
    assert_ok(prep("criteo-kaggle", SAMPLE.as_posix(), str(tsv), "--workers", "1"))
    rows = {s: read_meta(out)["splits"][s]["rows"] for s in ("train", "val", "test")}
    assert rows == {s: read_meta(tsv)["splits"][s]["rows"] for s in rows} == {"train": 7715, "val": 642, "test": 643}
    lines = [line.split("\t") for line in SAMPLE.read_text().splitlines()]
    for split, lo in (("test", 7715), ("val", 7715 + 643)):  # the TSV's lines, whichever command cut them
        raw = np.array([[int(v or "0", 16) % 50000 for v in f[14:]] for f in lines[lo : lo + rows[split]]])
        ours = our_rows(out, [split])
        assert np.array_equal(ours["ids"], raw) and np.array_equal(ours["labels"], our_rows(tsv, [split])["labels"])


def test_one_tsv_gives_the_same_test_rows_whichever_command(tmp_path: Path) -> None:
    """criteo-kaggle's split and from-dlrm-npz's agree on the sample: the reference's 7 chunks with
    test the first ceil half of the last; the dlrm fixture is data_utils.py's real dtypes (X_cat
    float64, compressed)."""
    lines = [line.split("\t") for line in SAMPLE.read_text().splitlines()]
    y = np.array([int(f[0]) for f in lines], "i4")
    x_int = np.maximum(np.array([[int(v or 0) for v in f[1:14]] for f in lines], "i4"), 0)
    x_cat = np.zeros((len(lines), 26))  # np.zeros' float64, as processCriteoAdData leaves X_cat
    counts = np.zeros(26, "i4")
    for j in range(26):  # contiguous ids per feature, as its convertDicts give
        values = [f[14 + j] for f in lines]
        lookup = {v: i for i, v in enumerate(dict.fromkeys(values))}
        x_cat[:, j] = [lookup[v] for v in values]
        counts[j] = len(lookup)
    raw = tmp_path / "raw"
    raw.mkdir()
    np.savez_compressed(raw / "kaggleAdDisplayChallenge_processed.npz", X_cat=x_cat, X_int=x_int, y=y, counts=counts)
    per_day = [len(c) for c in np.array_split(np.arange(len(lines)), 7)]
    np.savez_compressed(raw / "train_day_count.npz", total_per_file=np.array(per_day))
    npz, tsv = tmp_path / "npz", tmp_path / "tsv"
    assert_ok(prep("from-dlrm-npz", str(raw / "kaggleAdDisplayChallenge_processed.npz"), str(npz)))
    assert_ok(prep("criteo-kaggle", SAMPLE.as_posix(), str(tsv), "--workers", "1"))
    for split, rows in (("train", 7715), ("test", 643), ("val", 642)):
        a, b = our_rows(npz, [split]), our_rows(tsv, [split])
        assert len(a["labels"]) == rows and np.array_equal(a["labels"], b["labels"]), split
        np.testing.assert_array_equal(a["dense"], b["dense"])  # both log(max(x, 0) + 1) of the same counts
    first_test = len(lines) - 643 - 642
    assert np.array_equal(our_rows(npz, ["test"])["ids"][0], x_cat[first_test].astype(np.int64))
