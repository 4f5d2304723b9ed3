"""Converters from formats people already have: TorchRec's Criteo .npy day files
(`mlet-prep torchrec-npy`) and NVTabular parquet (`mlet-prep nvtabular`). The tests write tiny files
in the upstream layouts themselves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
from data_prep.dataset_format import read_meta
from mlet_dist.data.dataset_check import check_dataset
from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream


def _write_days(root: Path, rows: List[int], seed: int = 0) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """day_N_{dense,sparse,labels}.npy as torchrec's npy_preproc_criteo writes them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    days = []
    for n, r in enumerate(rows):
        dense = np.log(rng.integers(0, 50, (r, 13)) + 2.0).astype(np.float32)  # log(x - min + 2), x >= -1
        sparse = rng.integers(0, 40, (r, 26)).astype(np.int32)
        labels = rng.integers(0, 2, (r, 1)).astype(np.int32)
        np.save(root / f"day_{n}_dense.npy", dense)
        np.save(root / f"day_{n}_sparse.npy", sparse)
        np.save(root / f"day_{n}_labels.npy", labels)
        days.append((dense, sparse, labels[:, 0]))
    return days


def _all_rows(ds: Path) -> pa.Table:
    meta = read_meta(ds)
    return pa.concat_tables(
        [pq.read_table(ds / f) for s in ("train", "val", "test") for f in meta["splits"][s]["files"]]
    )


def test_torchrec_npy_days_convert(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    days = _write_days(tmp_path / "npy", [300, 250, 101])
    out = tmp_path / "ds"
    assert prep_main(["torchrec-npy", str(tmp_path / "npy"), str(out), "--row-group-rows", "128"]) == 0
    meta = read_meta(out)
    assert meta["rows_read"] == 651 and meta["rows_rejected"] == 0
    assert {s: meta["splits"][s]["rows"] for s in ("train", "val", "test")} == {"train": 550, "val": 51, "test": 50}
    assert meta["sources"] == ["day_0", "day_1", "day_2"] and "not transformed again" in meta["dense_transform"]
    sparse = np.concatenate([d[1] for d in days])
    assert meta["table_sizes"]["C5"] == int(sparse[:, 4].max()) + 1
    table = _all_rows(out)
    dense = np.concatenate([d[0] for d in days])
    labels = np.concatenate([d[2] for d in days])
    for row in (0, 299, 300, 549, 550, 600, 650):  # a few decoded rows, across days and splits
        assert table.column("label")[row].as_py() == labels[row]
        assert [table.column(f"I{j + 1}")[row].as_py() for j in range(13)] == dense[row].tolist()  # not re-logged
        assert [table.column(f"C{j + 1}")[row].as_py() for j in range(26)] == sparse[row].tolist()
    check_dataset(DatasetMeta.load(out))
    batch = next(iter(ParquetBatchStream(out, "train", 32))).batch
    assert batch.sparse_features["C1"].values().tolist() == sparse[:32, 0].tolist()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("label", r"day_1_labels.npy: row 7: label 3 is not 0 or 1"),
        ("id", r"day_0_sparse.npy: row 11: negative id -5 in C3"),
        ("rows", r"day_1: rows differ: day_1_dense.npy 40, day_1_sparse.npy 39"),
        ("missing", r"day_1_sparse.npy is missing"),
    ],
)
def test_bad_day_files_are_one_line_and_publish_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage: str, message: str
) -> None:
    src = tmp_path / "npy"
    days = _write_days(src, [40, 40])
    if damage == "label":
        labels = days[1][2].copy()
        labels[7] = 3
        np.save(src / "day_1_labels.npy", labels)
    elif damage == "id":
        sparse = days[0][1].copy()
        sparse[11, 2] = -5
        np.save(src / "day_0_sparse.npy", sparse)
    elif damage == "rows":
        np.save(src / "day_1_sparse.npy", days[1][1][:39])
    else:
        (src / "day_1_sparse.npy").unlink()
    assert prep_main(["torchrec-npy", str(src), str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "ds").exists()


def test_given_table_sizes_must_hold_the_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_days(tmp_path / "npy", [30, 30])
    assert prep_main(["torchrec-npy", str(tmp_path / "npy"), str(tmp_path / "ds"), "--table-sizes", "5"]) == 2
    assert "outside the given table size 5" in capsys.readouterr().err
    assert prep_main(["torchrec-npy", str(tmp_path / "npy"), str(tmp_path / "ok"), "--table-sizes", "100"]) == 0
    assert json.loads((tmp_path / "ok" / "meta.json").read_text())["table_sizes"]["C26"] == 100


# --- NVTabular parquet (`mlet-prep nvtabular`) ------------------------------------------------

NVT_CARD = [7, 50, 3]  # cardinalities of cat_0..cat_2 in the tiny schema


def _nvt_schema(cards: List[int], dense: int = 2) -> str:
    """schema.pbtxt as NVTabular/Merlin writes it (TensorFlow metadata text format)."""
    parts = []
    for i, card in enumerate(cards):
        parts.append(
            f'feature {{\n  name: "cat_{i}"\n  type: INT\n  int_domain {{\n    name: "cat_{i}"\n'
            f"    min: 0\n    max: {card - 1}\n    is_categorical: true\n  }}\n"
            f'  annotation {{\n    tag: "categorical"\n  }}\n}}\n'
        )
    for i in range(dense):
        parts.append(
            f'feature {{\n  name: "int_{i}"\n  type: FLOAT\n  float_domain {{\n    name: "int_{i}"\n'
            f'    min: 0.0\n    max: 9.5\n  }}\n  annotation {{\n    tag: "continuous"\n  }}\n}}\n'
        )
    parts.append(
        'feature {\n  name: "label"\n  type: FLOAT\n  annotation {\n    tag: "binary_classification"\n'
        '    tag: "target"  # a comment\n  }\n}\n'
    )
    return "".join(parts)


def _write_nvt(root: Path, rows: Dict[str, List[int]], seed: int = 0) -> Dict[str, pa.Table]:
    """train/ validation/ test/ with part_N.parquet (float32 label and int_*, int64 cat_*) + schema.pbtxt."""
    rng = np.random.default_rng(seed)
    tables = {}
    for split, parts in rows.items():
        d = root / split
        d.mkdir(parents=True)
        (d / "schema.pbtxt").write_text(_nvt_schema(NVT_CARD))
        pieces = []
        for n, r in enumerate(parts):
            # the top id of each domain stays unused (Categorify reserves ids), so max id + 1 < cardinality
            cols = {f"cat_{i}": pa.array(rng.integers(0, c - 1, r), pa.int64()) for i, c in enumerate(NVT_CARD)}
            cols.update(
                {f"int_{i}": pa.array(np.log(rng.integers(0, 50, r) + 3.0).astype(np.float32)) for i in range(2)}
            )
            cols["label"] = pa.array(rng.integers(0, 2, r).astype(np.float32))
            t = pa.table(cols)
            pq.write_table(t, d / f"part_{n}.parquet")
            pieces.append(t)
        tables[split] = pa.concat_tables(pieces)
    return tables


def test_nvtabular_parquet_converts(tmp_path: Path) -> None:
    src = tmp_path / "nvt"
    # part_10 sorts after part_2 (natural order), as NVTabular numbers them
    tables = _write_nvt(src, {"train": [40] * 11, "validation": [30], "test": [20, 5]})
    out = tmp_path / "ds"
    assert prep_main(["nvtabular", str(src), str(out), "--row-group-rows", "64"]) == 0
    meta = read_meta(out)
    assert meta["dataset"] == "nvtabular" and meta["rows_read"] == 495 and meta["rows_rejected"] == 0
    assert {s: meta["splits"][s]["rows"] for s in ("train", "val", "test")} == {"train": 440, "val": 30, "test": 25}
    assert meta["table_sizes"] == {"cat_0": 7, "cat_1": 50, "cat_2": 3}  # from schema.pbtxt, not max id + 1
    assert meta["dense_features"] == ["int_0", "int_1"] and "not transformed again" in meta["dense_transform"]
    assert meta["sources"][:3] == ["train/part_0.parquet", "train/part_1.parquet", "train/part_2.parquet"]
    got = _all_rows(out)
    want = pa.concat_tables([tables[s] for s in ("train", "validation", "test")])
    for row in (0, 39, 40, 399, 400, 439, 440, 469, 470, 494):  # across part files and splits
        assert got.column("label")[row].as_py() == want.column("label")[row].as_py()
        assert [got.column(f"int_{i}")[row].as_py() for i in range(2)] == [
            want.column(f"int_{i}")[row].as_py() for i in range(2)
        ]  # float32 copied, not re-logged
        assert [got.column(f"cat_{i}")[row].as_py() for i in range(3)] == [
            want.column(f"cat_{i}")[row].as_py() for i in range(3)
        ]
    check_dataset(DatasetMeta.load(out))
    batch = next(iter(ParquetBatchStream(out, "train", 32))).batch
    assert batch.sparse_features["cat_1"].values().tolist() == want.column("cat_1").to_pylist()[:32]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing_column", r"validation/part_0.parquet: missing columns \['cat_2'\] \(declared in schema.pbtxt\)"),
        ("out_of_domain", r"train/part_1.parquet: row 4: cat_1 id 50 is outside its schema.pbtxt domain \[0, 49\]"),
        ("label", r"test/part_0.parquet: row 9: label 0.5 is not 0 or 1"),
        ("undeclared", r"train/part_0.parquet: columns \['cat_3'\] are not in schema.pbtxt"),
        ("schema_disagrees", r"test/schema.pbtxt disagrees with .*train/schema.pbtxt"),
        ("no_schema", r"schema.pbtxt is missing"),
        ("no_validation", r"no validation/valid/val directory"),
        ("null", r"train/part_0.parquet: row 3: int_1 is null"),
    ],
)
def test_bad_nvtabular_input_is_one_line_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage: str, message: str
) -> None:
    src = tmp_path / "nvt"
    tables = _write_nvt(src, {"train": [20, 20], "validation": [20], "test": [20]})
    if damage == "missing_column":
        pq.write_table(tables["validation"].drop(["cat_2"]), src / "validation/part_0.parquet")
    elif damage == "out_of_domain":
        t = pq.read_table(src / "train/part_1.parquet")
        ids = t.column("cat_1").to_numpy().copy()
        ids[4] = 50  # cardinality 50: ids 0..49
        pq.write_table(
            t.set_column(t.schema.get_field_index("cat_1"), "cat_1", pa.array(ids)), src / "train/part_1.parquet"
        )
    elif damage == "label":
        labels = tables["test"].column("label").to_numpy().copy()
        labels[9] = 0.5
        t = tables["test"]
        pq.write_table(
            t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels)), src / "test/part_0.parquet"
        )
    elif damage == "undeclared":
        t = pq.read_table(src / "train/part_0.parquet")
        pq.write_table(t.append_column("cat_3", t.column("cat_0")), src / "train/part_0.parquet")
    elif damage == "schema_disagrees":
        (src / "test/schema.pbtxt").write_text(_nvt_schema([7, 51, 3]))
    elif damage == "no_schema":
        for d in ("train", "validation", "test"):
            (src / d / "schema.pbtxt").unlink()
    elif damage == "no_validation":
        for f in (src / "validation").iterdir():
            f.unlink()
        (src / "validation").rmdir()
    else:
        t = pq.read_table(src / "train/part_0.parquet")
        values = t.column("int_1").to_pylist()
        values[3] = None
        pq.write_table(
            t.set_column(t.schema.get_field_index("int_1"), "int_1", pa.array(values, pa.float32())),
            src / "train/part_0.parquet",
        )
    assert prep_main(["nvtabular", str(src), str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "ds").exists()


def test_from_spelling_of_the_first_converters_is_the_same_command(tmp_path: Path) -> None:
    """Every converter answers to `from-*` (the first two also to their old names): same output."""
    import hashlib

    src = tmp_path / "nvt"
    _write_nvt(src, {"train": [40, 40], "validation": [30], "test": [20]})
    assert prep_main(["nvtabular", str(src), str(tmp_path / "a")]) == 0
    assert prep_main(["from-nvtabular", str(src), str(tmp_path / "b")]) == 0

    def digests(root: Path) -> dict:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert digests(tmp_path / "a") == digests(tmp_path / "b") and len(digests(tmp_path / "a")) > 3
    assert prep_main(["from-torchrec-npy", str(tmp_path / "missing"), str(tmp_path / "c")]) == 2  # dispatched, one line
