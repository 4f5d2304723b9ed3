"""Issue 32: what prep writes carries enough to detect damage, and every reader checks it.

* part files carry parquet page checksums (a flipped bit on disk used to train on another id);
* meta.json records a sha256 of each feature's vocabulary (with its hashed flag and table size), which
  --vocab-from and raw scoring verify; both refuse the same damaged arrays (duplicate ids);
* a line longer than textio.MAX_LINE_BYTES is refused with one line, never buffered whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
from data_prep.vocabulary import Vocabulary
from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream
from mlet_dist.errors import DatasetError
from mlet_dist.serving.scoring import ScoringStream

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data_prep" / "samples" / "criteo_sample.tsv"


def _prepare(out: Path, *extra: str) -> Path:
    assert prep_main(["criteo-kaggle", str(SAMPLE), str(out), "--no-progress", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The sample prepared by one process and by two workers in several part files (workers
    assemble the first parts, the parent streams the last one)."""
    root = tmp_path_factory.mktemp("prepared")
    return {
        "w1": _prepare(root / "w1", "--workers", "1"),
        "w2": _prepare(root / "w2", "--workers", "2", "--rows-per-file", "3000", "--row-group-rows", "1000"),
    }


def flip_silent_bit(part: Path, column: str = "C15") -> int:
    """Flip one bit inside a data page of ``column`` that a reader *without* page checksums decodes
    silently to different values (the issue's case: C15 row 498, 17 -> 16); returns its offset."""
    original = part.read_bytes()
    before = pq.read_table(part, page_checksum_verification=False)
    md = pq.ParquetFile(part).metadata
    index = [md.schema.column(i).path for i in range(md.num_columns)].index(column)
    chunk = md.row_group(0).column(index)
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    for offset in range((chunk.data_page_offset + end) // 2, end):
        damaged = bytearray(original)
        damaged[offset] ^= 1
        part.write_bytes(bytes(damaged))
        try:
            after = pq.read_table(part, page_checksum_verification=False)
        except OSError:
            continue  # a flip the decoder notices anyway: not the silent case
        if not after.column(column).equals(before.column(column)):
            assert after.drop([column]).equals(before.drop([column]))
            return offset
    raise AssertionError(f"no silently decoding bit flip found in {part}")


def _damaged_copy(src: Path, dst: Path, part: str) -> Path:
    shutil.copytree(src, dst)
    flip_silent_bit(dst / part)
    return dst / part


def _read_all(stream: ParquetBatchStream) -> int:
    return sum(1 for _ in stream)


@pytest.mark.parametrize(
    "run, part",
    [
        ("w1", "train/part-00000.parquet"),
        ("w2", "train/part-00000.parquet"),  # assembled by a worker
        ("w2", "train/part-00002.parquet"),  # the last part, streamed by the parent
    ],
)
def test_flipped_bit_in_a_part_file_stops_the_training_reader(
    prepared: Dict[str, Path], tmp_path: Path, run: str, part: str
) -> None:
    damaged = _damaged_copy(prepared[run], tmp_path / "data", part)
    stream = ParquetBatchStream(tmp_path / "data", "train", local_batch_size=512, drop_last=False)
    with pytest.raises(DatasetError, match=f"cannot read {damaged}.*CRC checksum"):
        _read_all(stream)


def test_flipped_bit_stops_scoring_with_one_line(prepared: Dict[str, Path], tmp_path: Path) -> None:
    damaged = _damaged_copy(prepared["w1"], tmp_path / "data", "train/part-00000.parquet")
    meta = DatasetMeta.load(tmp_path / "data")
    stream = ScoringStream(tmp_path / "data", "train", 512, dict(meta.table_sizes))
    with pytest.raises(DatasetError, match=f"cannot read {damaged}.*CRC checksum"):
        list(stream)


def test_undamaged_parts_read_whole(prepared: Dict[str, Path]) -> None:
    """The checksums cost no rows: every split of both runs reads in full, with the same rows."""
    for split in ("train", "val", "test"):
        rows: List[int] = []
        for run in ("w1", "w2"):
            meta = DatasetMeta.load(prepared[run])
            rows.append(
                sum(pq.read_table(p, page_checksum_verification=True).num_rows for p in meta.split_files[split])
            )
        assert rows[0] == rows[1] == DatasetMeta.load(prepared["w1"]).split_rows[split]


def test_dataset_check_verifies_pages_it_reads(prepared: Dict[str, Path], tmp_path: Path) -> None:
    """The footer check reads data pages only for a column without statistics: those reads verify too."""
    from mlet_dist.data.dataset_check import check_dataset

    shutil.copytree(prepared["w1"], tmp_path / "data")
    part = tmp_path / "data" / "train/part-00000.parquet"
    pq.write_table(pq.read_table(part), part, write_statistics=False, write_page_checksum=True)
    flip_silent_bit(part)
    with pytest.raises(DatasetError, match=f"cannot read {part}.*CRC checksum"):
        check_dataset(DatasetMeta.load(tmp_path / "data"))


# -- vocabulary digests ------------------------------------------------------------------------

DAY0_LINES = 4500  # the sample's first half is "day 0" (its vocabulary), the second half "day 1"


@pytest.fixture(scope="module")
def vocab_days(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Day 0 prepared with 13 hashed features (--hash-size 1000), day 1 as raw text. C6 and C22 are
    exact with 8 values each (table 9): swapping their files passes every structural check."""
    root = tmp_path_factory.mktemp("vocab")
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    (root / "day0.tsv").write_bytes(b"".join(lines[:DAY0_LINES]))
    (root / "day1.tsv").write_bytes(b"".join(lines[DAY0_LINES:]))
    assert (
        prep_main(
            [
                "criteo-kaggle",
                str(root / "day0.tsv"),
                str(root / "d0"),
                "--no-progress",
                "--workers",
                "1",
                "--hash-size",
                "1000",
            ]
        )
        == 0
    )
    entries = json.loads((root / "d0" / "meta.json").read_text())["vocabulary"]["features"]
    assert entries["C6"]["values"] == entries["C22"]["values"] and not entries["C6"]["hashed"]
    return {"root": root, "day0": root / "d0", "day1": root / "day1.tsv"}


def _edit_meta(data: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((data / "meta.json").read_text())
    edit(meta)
    (data / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=2) + "\n")


def _rewrite_ids(path: Path, ids: np.ndarray) -> None:
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids)), path)


def _swap_files(data: Path) -> None:
    a, b = data / "vocab/C6.parquet", data / "vocab/C22.parquet"
    held = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(held)


def _permute_ids(data: Path) -> None:
    path = data / "vocab/C6.parquet"
    _rewrite_ids(path, pq.read_table(path).column("id").to_numpy()[::-1].copy())


def _flip_hashed(data: Path) -> None:
    _edit_meta(data, lambda m: m["vocabulary"]["features"]["C6"].update(hashed=True))


def _grow_table(data: Path) -> None:
    _edit_meta(data, lambda m: m["table_sizes"].update(C6=m["table_sizes"]["C6"] + 1))


# Damage that keys ascending, ids distinct in range and value counts all pass: only the digest sees it.
UNSEEN_DAMAGE = {
    "swapped_files": _swap_files,
    "permuted_ids": _permute_ids,
    "flipped_hashed": _flip_hashed,
    "grown_table": _grow_table,
}


def _damaged(vocab_days: Dict[str, Path], tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    data = tmp_path / "d0"
    shutil.copytree(vocab_days["day0"], data)
    damage(data)
    return data


def _vocab_from(vocab_days: Dict[str, Path], data: Path, out: Path, capsys: pytest.CaptureFixture) -> List[str]:
    """mlet-prep --vocab-from's exit code check and its stderr lines."""
    code = prep_main(
        [
            "criteo-kaggle",
            str(vocab_days["day1"]),
            str(out),
            "--no-progress",
            "--workers",
            "1",
            "--vocab-from",
            str(data),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == (0 if out.exists() else 2), (code, err)
    return err


@pytest.mark.parametrize("kind", sorted(UNSEEN_DAMAGE))
def test_vocab_from_refuses_a_vocabulary_that_does_not_match_its_digest(
    vocab_days: Dict[str, Path], tmp_path: Path, kind: str, capsys: pytest.CaptureFixture
) -> None:
    data = _damaged(vocab_days, tmp_path, UNSEEN_DAMAGE[kind])
    out = tmp_path / "out"
    err = _vocab_from(vocab_days, data, out, capsys)
    assert not out.exists() and len(err) == 1 and err[0].startswith("mlet-prep: error: --vocab-from"), err
    assert "does not match its sha256 in meta.json" in err[0], err
    assert ("the vocabulary of C22" if kind == "swapped_files" else "the vocabulary of C6") in err[0], err


@pytest.mark.parametrize("kind", sorted(UNSEEN_DAMAGE))
def test_raw_scoring_vocabulary_refuses_what_vocab_from_refuses(
    vocab_days: Dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """Vocabulary.load is what mlet-predict --raw encodes with (predict_cli.raw_stream)."""
    data = _damaged(vocab_days, tmp_path, UNSEEN_DAMAGE[kind])
    with pytest.raises(ValueError, match="the vocabulary of C(6|22) does not match its sha256"):
        Vocabulary.load(data)


def test_both_loaders_refuse_duplicate_ids_alike(
    vocab_days: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Raw scoring used to accept two values with one id (only keys and range were checked)."""

    def duplicate(data: Path) -> None:
        path = data / "vocab/C6.parquet"
        ids = pq.read_table(path).column("id").to_numpy().copy()
        ids[1] = ids[0]
        _rewrite_ids(path, ids)
        _edit_meta(data, lambda m: [e.pop("sha256", None) for e in m["vocabulary"]["features"].values()])

    data = _damaged(vocab_days, tmp_path, duplicate)  # no digests: the arrays check alone must refuse
    with pytest.raises(ValueError, match="ids distinct in") as raised:
        Vocabulary.load(data)
    err = _vocab_from(vocab_days, data, tmp_path / "out", capsys)
    assert len(err) == 1 and err[0].startswith("mlet-prep: error: --vocab-from"), err
    problem = str(raised.value).split("C6.parquet ")[1].split(" (the vocabulary")[0]  # the shared check's words
    assert err[0].endswith(f"C6.parquet {problem}"), (problem, err)


def test_a_dataset_without_digests_is_a_warning_and_still_encodes(
    vocab_days: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Prepared before digests were recorded: warned, not refused (re-preparing would change meta.json,
    which the serving manifest of a model trained on it would then refuse)."""
    data = _damaged(
        vocab_days,
        tmp_path,
        lambda d: _edit_meta(d, lambda m: [e.pop("sha256") for e in m["vocabulary"]["features"].values()]),
    )
    vocab = Vocabulary.load(data)
    assert len(vocab.warnings) == 1 and "records no vocabulary sha256" in vocab.warnings[0]
    out = tmp_path / "out"
    err = _vocab_from(vocab_days, data, out, capsys)
    assert out.exists(), err
    assert len(err) == 1 and err[0].startswith("mlet-prep: warning: --vocab-from") and "re-run mlet-prep" in err[0]
    assert not Vocabulary.load(vocab_days["day0"]).warnings


def test_vocab_from_copies_the_digests_and_they_verify(
    vocab_days: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert not _vocab_from(vocab_days, vocab_days["day0"], out, capsys)[:-1]
    entries = json.loads((out / "meta.json").read_text())["vocabulary"]["features"]
    assert all(len(e["sha256"]) == 64 for e in entries.values())
    assert not Vocabulary.load(out).warnings  # the copied files match the copied digests


def test_predict_raw_refuses_a_swapped_vocabulary(
    vocab_days: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The issue's case: meta.json untouched (the serving manifest accepts it), two features' vocabulary
    files swapped; every prediction used to change silently."""
    from test_predict_raw import _served
    from mlet_dist.serving import predict_cli

    serving = _served(tmp_path, vocab_days["day0"], 3)
    argv = ["--serving", str(serving), "--raw", str(vocab_days["day1"]), "--no-progress"]
    report = predict_cli.predict_main([*argv, "--out", str(tmp_path / "ok.parquet")])
    assert report["rows"] == 9000 - DAY0_LINES and not report["warnings"]
    data = _damaged(vocab_days, tmp_path, _swap_files)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        predict_cli.predict_main([*argv, "--data", str(data), "--out", str(tmp_path / "bad.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "the vocabulary of C22 does not match" in err[0], err


def test_predict_raw_warns_for_a_dataset_without_digests(
    vocab_days: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from test_predict_raw import _served
    from mlet_dist.serving import predict_cli

    legacy = _damaged(
        vocab_days,
        tmp_path,
        lambda d: _edit_meta(d, lambda m: [e.pop("sha256") for e in m["vocabulary"]["features"].values()]),
    )
    serving = _served(tmp_path, legacy, 3)  # a model trained on it: its manifest records this meta.json
    capsys.readouterr()
    report = predict_cli.predict_main(
        [
            "--serving",
            str(serving),
            "--raw",
            str(vocab_days["day1"]),
            "--no-progress",
            "--out",
            str(tmp_path / "p.parquet"),
        ]
    )
    assert report["rows"] == 9000 - DAY0_LINES
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "records no vocabulary sha256" in warned[0], warned


# -- line length ---------------------------------------------------------------------------------

LONG_LINE_MB = 64

_RSS_PROBE = r"""
import json, sys
from data_prep import textio
from data_prep.cli import main
mode, path = sys.argv[1], sys.argv[2]
def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM): the imports peaked ~400 MB above what stays resident
base = status_kb("VmRSS")
if mode == "read":  # the reader mlet-predict --raw scores through (raw_input.RawScoringStream)
    try:
        for _ in textio.iter_line_blocks(textio.Path(path)):
            pass
        code = 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
else:
    code = main(["criteo-kaggle", path, sys.argv[3], "--no-progress", "--workers", mode])
peak = status_kb("VmHWM")
print(json.dumps({"code": code, "growth_mb": (peak - base) / 1024}))
"""


def _long_line_input(tmp_path: Path, gz: bool) -> Path:
    """300 good rows, one line of LONG_LINE_MB MB (no tabs: a damaged or wrong file), 300 more."""
    import gzip

    rows = SAMPLE.read_bytes().splitlines(keepends=True)
    data = b"".join(rows[:300]) + b"7" * (LONG_LINE_MB << 20) + b"\n" + b"".join(rows[300:600])
    path = tmp_path / ("in.tsv.gz" if gz else "in.tsv")
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    return path


def _probe(mode: str, src: Path, out: Path) -> tuple:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, mode, str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result, [line for line in done.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("mode, gz", [("1", True), ("2", False), ("2", True), ("read", True)])
def test_a_huge_line_is_refused_in_bounded_memory(tmp_path: Path, mode: str, gz: bool) -> None:
    """The issue: one 1.5 GB line in a 6.5 MB gzip drove prep to 4.5 GB and raw scoring to 6.3 GB."""
    src = _long_line_input(tmp_path, gz)
    result, err = _probe(mode, src, tmp_path / "out")
    assert result["code"] == 2 and len(err) == 1, (result, err)
    head = len(b"".join(SAMPLE.read_bytes().splitlines(keepends=True)[:300]))
    where = f"{src}:301: line of" if gz else f"{src} (the line at byte {head:,}): line of"  # plain: ranges
    assert where in err[0] and "longer than the limit of 1,048,576 bytes" in err[0], err
    assert err[0].startswith("mlet-prep: error:" if mode != "read" else "error:"), err
    assert result["growth_mb"] < LONG_LINE_MB / 2, result  # the line is never held whole
    assert not (tmp_path / "out").exists()
