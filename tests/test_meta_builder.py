"""One meta.json builder (data_prep.dataset_format.PreparedMeta): every writer of a prepared dataset
(raw preparation, the converters, nvtabular, synthetic, planted) fills the same typed fields, so the
keys they share cannot drift apart. Byte identity of the writers' output is
benchmarks/prep_identity.py's check."""

import ast
import json
from pathlib import Path

from data_prep.dataset_format import FORMAT_VERSION, PreparedMeta, source_label, validate_meta, write_meta

DATA_PREP = Path(__file__).resolve().parents[1] / "data_prep"


def _minimal(**changes: object) -> PreparedMeta:
    fields = dict(
        dataset="d",
        source="a.tsv",
        sources=["a.tsv"],
        dense_features=["I1"],
        sparse_features=["C1", "C2"],
        table_sizes={"C1": 3, "C2": 4},
        splits={s: {"rows": 0, "files": []} for s in ("train", "val", "test")},
        split={"method": "m"},
        rows_read=0,
    )
    fields.update(changes)
    return PreparedMeta(**fields)


def test_no_writer_builds_meta_json_by_hand() -> None:
    """A dict literal with a format_version key outside dataset_format.py is a second builder."""
    by_hand = []
    for path in sorted(DATA_PREP.rglob("*.py")):
        if path.name == "dataset_format.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value == "format_version" for k in node.keys
            ):
                by_hand.append(f"{path.relative_to(DATA_PREP)}:{node.lineno}")
    assert by_hand == []


def test_the_built_meta_json_is_readable_and_leaves_unset_optional_keys_out(tmp_path: Path) -> None:
    meta = _minimal().to_dict()
    validate_meta(meta, "built")
    assert meta["format_version"] == FORMAT_VERSION and meta["label"] == "label"
    assert (meta["min_count"], meta["hash_size"], meta["rejects_file"], meta["rows_rejected"]) == (1, None, None, 0)
    assert meta["pooling"] == {"C1": "sum", "C2": "sum"} and meta["multi_hot"] == {}
    for key in (
        "rows_per_source",
        "count_memory_mb",
        "id_histograms",
        "dense_transform",
        "sparse_transform",
        "vocabulary",
    ):
        assert key not in meta
    write_meta(tmp_path, meta)
    assert json.loads((tmp_path / "meta.json").read_text()) == meta


def test_given_fields_and_a_writer_s_own_sections_are_written() -> None:
    meta = _minimal(
        hashed_features={"C2": "b", "C1": "a"},
        rows_rejected_by_kind={"z": 1, "a": 2},
        rows_per_source={"a.tsv": 7},
        dense_transform="log",
        multi_hot={"C2": 3},
        pooling={"C2": "mean"},
        extra={"planted": {"rank": 2}},
    ).to_dict()
    assert list(meta["hashed_features"]) == ["C1", "C2"] and list(meta["rows_rejected_by_kind"]) == ["a", "z"]
    assert meta["rows_per_source"] == {"a.tsv": 7} and meta["dense_transform"] == "log"
    assert meta["multi_hot"] == {"C2": 3} and meta["pooling"] == {"C1": "sum", "C2": "mean"}
    assert meta["planted"] == {"rank": 2}


def test_source_names_one_input_or_the_first_and_last() -> None:
    assert source_label(["a"]) == "a"
    assert source_label(["day_0", "day_1", "day_2"], "days") == "day_0 .. day_2 (3 days)"
