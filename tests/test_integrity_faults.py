"""Issue 32: what prep writes carries enough to detect damage, and every reader checks it.

* part files carry parquet page checksums (a flipped bit on disk used to train on another id);
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List

import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
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


@pytest.mark.parametrize("run, part", [
    ("w1", "train/part-00000.parquet"),
    ("w2", "train/part-00000.parquet"),  # assembled by a worker
    ("w2", "train/part-00002.parquet"),  # the last part, streamed by the parent
])
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
            rows.append(sum(pq.read_table(p, page_checksum_verification=True).num_rows
                            for p in meta.split_files[split]))
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
