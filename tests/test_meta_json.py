"""One meta.json reader (data_prep.dataset_format): mlet-plan --spec and the sweep's rare-item
cache read a dataset's meta.json through it, so a meta.json training would refuse is refused
everywhere with the same message."""

import hashlib
import json
from pathlib import Path

import pytest

from data_prep.dataset_format import meta_file, read_meta
from data_prep.generate.planted import PlantedSpec, generate_planted
from mlet_dist.planning.spec import SpecError, load_table_spec
from mlet_dist.sweep.rare_items import _data_fingerprint


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("meta") / "data"
    generate_planted(out, PlantedSpec(rows=300, tables=2, cardinality=(20,), rank=2, dense=1, seed=1))
    return out


def _edited(dataset: Path, tmp_path: Path, drop: str = "", **changes: object) -> Path:
    meta = json.loads((dataset / "meta.json").read_text())
    meta.update(changes)
    meta.pop(drop, None)
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(meta))
    return path


def test_meta_file_is_the_directory_s_or_the_file_itself(dataset: Path) -> None:
    assert meta_file(dataset) == dataset / "meta.json" and meta_file(dataset / "meta.json") == dataset / "meta.json"


@pytest.mark.parametrize(
    "problem", [{"format_version": 3}, {"drop": "splits"}, {"sparse_features": "C1"}, {"multi_hot": {"C9": 2}}]
)
def test_plan_spec_refuses_a_bad_meta_json_with_the_reader_s_message(
    dataset: Path, tmp_path: Path, problem: dict
) -> None:
    path = _edited(dataset, tmp_path, **problem)
    with pytest.raises(ValueError) as read_err:
        read_meta(path)
    with pytest.raises(SpecError) as spec_err:
        load_table_spec(path)
    assert str(spec_err.value) == str(read_err.value) and str(path) in str(read_err.value)


def test_plan_spec_still_reads_good_meta_json_and_plain_spec_files(dataset: Path, tmp_path: Path) -> None:
    spec = load_table_spec(dataset)
    assert spec.table_sizes == read_meta(dataset)["table_sizes"] and spec.num_dense == 1
    plain = tmp_path / "spec.json"  # a spec file is not a meta.json: no format_version, no splits
    plain.write_text(json.dumps({"table_sizes": {"a": 3}, "dense_features": 2}))
    assert load_table_spec(plain).table_sizes == {"a": 3}


def test_rare_item_cache_key_is_the_meta_json_digest(dataset: Path) -> None:
    digest = hashlib.sha256((dataset / "meta.json").read_bytes()).hexdigest()[:16]
    assert _data_fingerprint(dataset) == digest
