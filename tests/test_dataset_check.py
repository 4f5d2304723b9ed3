"""The whole-dataset check from parquet footers (data/dataset_check.py): what it must refuse."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.criteo import prepare_criteo_kaggle
from mlet_dist.data.dataset_check import check_dataset
from mlet_dist.data.parquet_batches import DatasetMeta
from mlet_dist.errors import DatasetError

SAMPLE = Path(__file__).resolve().parents[1] / "data_prep" / "samples" / "criteo_sample.tsv"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("check") / "criteo"
    prepare_criteo_kaggle(SAMPLE, out, rows_per_file=2000)
    return out


@pytest.fixture
def copy(prepared: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "data"))


def test_intact_dataset_passes_and_counts_rows(prepared: Path) -> None:
    meta = DatasetMeta.load(prepared)
    assert check_dataset(meta) == meta.split_rows
    assert len(meta.split_files["train"]) > 1  # several parts: the accounting below is meaningful


def test_meta_json_that_lost_a_part_file(copy: Path) -> None:
    """meta.json edited to list one part fewer (rows adjusted to match): the reader alone trained
    silently on less data; rows_read = rejected + split rows catches it, as does the stray part."""
    meta = json.loads((copy / "meta.json").read_text())
    dropped = meta["splits"]["train"]["files"].pop()
    meta["splits"]["train"]["rows"] -= pq.ParquetFile(copy / dropped).metadata.num_rows
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="rows_read .* the dataset is missing rows"):
        check_dataset(DatasetMeta.load(copy))
    (copy / dropped).unlink()
    meta["rows_read"] = meta["rows_rejected"] + sum(s["rows"] for s in meta["splits"].values())
    (copy / "meta.json").write_text(json.dumps(meta))
    check_dataset(DatasetMeta.load(copy))  # consistent again once the part is really gone


def test_stray_part_file_not_in_meta(copy: Path) -> None:
    shutil.copy(copy / "val" / "part-00000.parquet", copy / "val" / "part-00099.parquet")
    with pytest.raises(DatasetError, match="part-00099.parquet is not listed"):
        check_dataset(DatasetMeta.load(copy))


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("label", 7, "labels must be 0 or 1"),
        ("C2", -1, "feature 'C2' has ids in \\[-1"),
        ("I4", float("inf"), "dense feature 'I4' has non-finite values"),
    ],
)
def test_bad_values_in_test_split(copy: Path, column: str, value: float, message: str) -> None:
    part = copy / "test" / "part-00000.parquet"
    table = pq.read_table(part)
    values = table.column(column).to_pylist()
    values[3] = value
    i = table.schema.get_field_index(column)
    pq.write_table(table.set_column(i, column, pa.array(values, type=table.schema.field(column).type)), part)
    with pytest.raises(DatasetError, match=message):
        check_dataset(DatasetMeta.load(copy))
