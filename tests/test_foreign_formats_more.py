"""Converters from MLPerf's multi-hot Criteo (`from-mlperf-multihot`) and the reference DLRM's
processed .npz / .bin (`from-dlrm-npz`, `from-dlrm-bin`). The tests write tiny files in each
upstream layout themselves (layouts as read in facebookresearch/dlrm, cited in the modules)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.cli import main as prep_main
from data_prep.dataset_format import read_meta
from data_prep.convert.common import npz_arrays
from mlet_dist.data.dataset_check import check_dataset
from mlet_dist.data.parquet_batches import DatasetMeta, ParquetBatchStream

BAGS = [3, 2, 1, 2, 6, 1] + [1] * 14 + [4, 1, 1, 1, 1, 1]  # bag size per feature (MLPerf's are 1..100)


def _all_rows(ds: Path, order: Tuple[str, ...] = ("train", "val", "test")) -> pa.Table:
    meta = read_meta(ds)
    return pa.concat_tables([pq.read_table(ds / f) for s in order for f in meta["splits"][s]["files"]])


def _one_line_exit_2(argv: List[str], capsys: pytest.CaptureFixture, message: str, out: Path) -> None:
    assert prep_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()


# --- MLPerf DLRM-DCNv2 multi-hot ----------------------------------------------------------------


def _write_mlperf(root: Path, rows: List[int], seed: int = 0, dense_dir: Path = None) -> List[Dict[str, np.ndarray]]:
    """day_N_sparse_multi_hot.npz (np.savez: members '0'..'25', int32 [rows, bag size]) as
    materialize_synthetic_multihot_dataset.py writes it, with day_N_dense.npy / day_N_labels.npy."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    dense_dir = dense_dir or root
    dense_dir.mkdir(parents=True, exist_ok=True)
    days = []
    for n, r in enumerate(rows):
        bags = {str(j): rng.integers(0, 30 + j, (r, k)).astype(np.int32) for j, k in enumerate(BAGS)}
        dense = np.log(rng.integers(0, 50, (r, 13)) + 2.0).astype(np.float32)
        labels = rng.integers(0, 2, (r, 1)).astype(np.int32)
        np.savez(root / f"day_{n}_sparse_multi_hot.npz", **bags)
        np.save(dense_dir / f"day_{n}_dense.npy", dense)
        np.save(dense_dir / f"day_{n}_labels.npy", labels)
        days.append({"dense": dense, "labels": labels[:, 0], **bags})
    return days


def test_mlperf_multihot_days_convert(tmp_path: Path) -> None:
    days = _write_mlperf(tmp_path / "mh", [120, 90, 41], dense_dir=tmp_path / "npy")
    out = tmp_path / "ds"
    assert (
        prep_main(
            [
                "from-mlperf-multihot",
                str(tmp_path / "mh"),
                str(out),
                "--dense-labels",
                str(tmp_path / "npy"),
                "--row-group-rows",
                "64",
            ]
        )
        == 0
    )
    meta = read_meta(out)
    assert meta["dataset"] == "mlperf-multihot" and meta["rows_read"] == 251 and meta["rows_rejected"] == 0
    assert meta["rows_per_source"] == {"day_0": 120, "day_1": 90, "day_2": 41}
    assert {s: meta["splits"][s]["rows"] for s in ("train", "val", "test")} == {"train": 210, "val": 21, "test": 20}
    assert meta["multi_hot"] == {f"C{j + 1}": k for j, k in enumerate(BAGS) if k > 1}
    assert set(meta["pooling"].values()) == {"sum"} and "not transformed again" in meta["dense_transform"]
    for j in (0, 4, 20, 25):
        want = max(int(d[str(j)].max()) for d in days) + 1
        assert meta["table_sizes"][f"C{j + 1}"] == want
    table = _all_rows(out)
    cat = {k: np.concatenate([d[k] for d in days]) for k in days[0]}
    for row in (0, 119, 120, 209, 210, 230, 231, 250):  # across days and splits
        assert table.column("label")[row].as_py() == cat["labels"][row]
        assert [table.column(f"I{j + 1}")[row].as_py() for j in range(13)] == cat["dense"][row].tolist()
        for j, k in enumerate(BAGS):
            got = table.column(f"C{j + 1}")[row].as_py()
            assert got == (cat[str(j)][row].tolist() if k > 1 else int(cat[str(j)][row, 0])), (row, j)
    check_dataset(DatasetMeta.load(out))
    batch = next(iter(ParquetBatchStream(out, "train", 16))).batch
    kjt = batch.sparse_features
    assert kjt["C5"].lengths().tolist() == [6] * 16 and kjt["C3"].lengths().tolist() == [1] * 16
    assert kjt["C5"].values().tolist() == cat["4"][:16].reshape(-1).tolist()


def test_mlperf_table_sizes_given(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_mlperf(tmp_path / "mh", [30, 30])
    _one_line_exit_2(
        ["from-mlperf-multihot", str(tmp_path / "mh"), str(tmp_path / "ds"), "--table-sizes", "20"],
        capsys,
        r"feature C1: id 2\d in the .npz files is outside the given table size 20",
        tmp_path / "ds",
    )
    assert prep_main(["from-mlperf-multihot", str(tmp_path / "mh"), str(tmp_path / "ok"), "--table-sizes", "100"]) == 0
    assert read_meta(tmp_path / "ok")["table_sizes"]["C26"] == 100


@pytest.mark.parametrize(
    "damage, message",
    [
        ("negative", r"day_1_sparse_multi_hot.npz: row 5: negative id -3 in C5 \(member '4'\)"),
        ("label", r"day_0_labels.npy: row 8: label 2 is not 0 or 1"),
        ("rows", r"day 1: rows differ: day_1_sparse_multi_hot.npz member '20' 39, day_1_labels.npy 40"),
        ("width", r"day_1_sparse_multi_hot.npz: C2 has bags of 3 ids, day_0_sparse_multi_hot.npz of 2"),
        ("max_bag", r"day_0_sparse_multi_hot.npz: row 0: C5 bag of 6 ids is longer than --max-bag 5"),
        ("member", r"day_0_sparse_multi_hot.npz: members .* where 0..25 were expected"),
        ("dense", r"day_1_dense.npy is missing"),
        ("nan", r"day_0_dense.npy: row 3: dense value nan is not finite"),
        ("cut", r"day_1_sparse_multi_hot.npz: not an .npz archive"),
        ("header", r"day_0_sparse_multi_hot.npz: member '7.npy' \(4000, 1\) runs past the end of the file"),
    ],
)
def test_bad_mlperf_input_is_one_line_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage: str, message: str
) -> None:
    src = tmp_path / "mh"
    days = _write_mlperf(src, [40, 40])
    bags = lambda d: {str(j): days[d][str(j)] for j in range(26)}  # noqa: E731
    argv = ["from-mlperf-multihot", str(src), str(tmp_path / "ds")]
    if damage == "negative":
        b = bags(1)
        b["4"] = b["4"].copy()
        b["4"][5, 2] = -3
        np.savez(src / "day_1_sparse_multi_hot.npz", **b)
    elif damage == "label":
        labels = days[0]["labels"].copy()
        labels[8] = 2
        np.save(src / "day_0_labels.npy", labels)
    elif damage == "rows":
        b = bags(1)
        b["20"] = b["20"][:39]
        np.savez(src / "day_1_sparse_multi_hot.npz", **b)
    elif damage == "width":
        b = bags(1)
        b["1"] = np.concatenate([b["1"], b["1"][:, :1]], axis=1)
        np.savez(src / "day_1_sparse_multi_hot.npz", **b)
    elif damage == "max_bag":
        argv += ["--max-bag", "5"]
    elif damage == "member":
        b = bags(0)
        del b["25"]
        np.savez(src / "day_0_sparse_multi_hot.npz", **b)
    elif damage == "dense":
        (src / "day_1_dense.npy").unlink()
    elif damage == "cut":  # an interrupted copy
        data = (src / "day_1_sparse_multi_hot.npz").read_bytes()
        (src / "day_1_sparse_multi_hot.npz").write_bytes(data[: len(data) // 2])
    elif damage == "header":  # a member whose .npy header claims more rows than the archive holds
        data = (src / "day_0_sparse_multi_hot.npz").read_bytes()
        i = data.index(b"(40, 1)", data.index(b"7.npy"))
        j = data.index(b"\n", i)  # the header's space padding absorbs the two extra digits
        assert data[j - 2 : j] == b"  "
        (src / "day_0_sparse_multi_hot.npz").write_bytes(data[:i] + b"(4000, 1)" + data[i + 7 : j - 2] + data[j:])
    else:
        dense = days[0]["dense"].copy()
        dense[3, 7] = np.nan
        np.save(src / "day_0_dense.npy", dense)
    _one_line_exit_2(argv, capsys, message, tmp_path / "ds")


def test_npz_members_are_memory_mapped_when_stored(tmp_path: Path) -> None:
    """np.savez members map in place (a 4 TB MLPerf day need not fit in memory); savez_compressed reads."""
    a = np.arange(12, dtype=np.int32).reshape(4, 3)
    np.savez(tmp_path / "s.npz", x=a, e=np.zeros((0, 2), np.int32))
    np.savez_compressed(tmp_path / "c.npz", x=a)
    stored, packed = npz_arrays(tmp_path / "s.npz"), npz_arrays(tmp_path / "c.npz")
    assert isinstance(stored["x"], np.memmap) and stored["x"].tolist() == a.tolist() and stored["e"].shape == (0, 2)
    assert not isinstance(packed["x"], np.memmap) and packed["x"].tolist() == a.tolist()


# --- reference DLRM: processed .npz and .bin ------------------------------------------------------

COUNTS = np.array([5, 40, 3, 17] + [11] * 22, np.int32)
DAYS = [50, 40, 31]  # rows per day; the last is split test (first 16) / val (15)


def _reference_arrays(seed: int = 0) -> Dict[str, np.ndarray]:
    """What data_utils.py keeps: raw int32 counts (negatives already 0), ids < counts, int32 labels."""
    rng = np.random.default_rng(seed)
    n = sum(DAYS)
    x_int = rng.integers(0, 3000, (n, 13)).astype(np.int32)
    x_int[::7, 1] = 0
    x_cat = (rng.integers(0, 1 << 30, (n, 26)) % COUNTS).astype(np.int32)
    return {"X_int": x_int, "X_cat": x_cat, "y": rng.integers(0, 2, n).astype(np.int32), "counts": COUNTS}


def _write_npz(root: Path, arrays: Dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / "kaggleAdDisplayChallenge_processed.npz", **arrays)
    np.savez_compressed(root / "train_day_count.npz", total_per_file=np.array(DAYS, np.int64))
    return root / "kaggleAdDisplayChallenge_processed.npz"


def _write_bins(root: Path, arrays: Dict[str, np.ndarray], prefix: str = "terabyte_processed") -> None:
    """numpy_to_binary's records: [y, X_int, X_cat] as int32 rows; test = first ceil half of the last day."""
    root.mkdir(parents=True, exist_ok=True)
    rows = np.concatenate([arrays["y"].reshape(-1, 1), arrays["X_int"], arrays["X_cat"]], axis=1).astype(np.int32)
    train_end = sum(DAYS[:-1])
    mid = train_end + (DAYS[-1] + 1) // 2
    for split, part in (("train", rows[:train_end]), ("test", rows[train_end:mid]), ("val", rows[mid:])):
        (root / f"{prefix}_{split}.bin").write_bytes(part.tobytes())
    np.savez_compressed(root / "day_fea_count.npz", counts=arrays["counts"])


def _check_reference_rows(out: Path, arrays: Dict[str, np.ndarray], modulo: int = 0) -> None:
    meta = read_meta(out)
    assert meta["rows_read"] == 121 and meta["rows_rejected"] == 0
    assert {s: meta["splits"][s]["rows"] for s in ("train", "val", "test")} == {"train": 90, "val": 15, "test": 16}
    sizes = np.minimum(COUNTS, modulo) if modulo else COUNTS
    assert [meta["table_sizes"][f"C{j + 1}"] for j in range(26)] == sizes.tolist()  # counts, not max id + 1
    assert "applied once here" in meta["dense_transform"]
    table = _all_rows(out, ("train", "test", "val"))  # the reference's order: test before val in the last day
    ids = arrays["X_cat"] % modulo if modulo else arrays["X_cat"]
    for row in (0, 49, 50, 89, 90, 105, 106, 120):
        assert table.column("label")[row].as_py() == arrays["y"][row]
        got = np.array([table.column(f"I{j + 1}")[row].as_py() for j in range(13)], np.float32)
        assert got.tolist() == np.log1p(arrays["X_int"][row].astype(np.float64)).astype(np.float32).tolist()
        # what the reference feeds its model: torch.log(float32(x) + 1), at load time
        np.testing.assert_allclose(got, np.log(arrays["X_int"][row].astype(np.float32) + 1), rtol=1e-6)
        assert [table.column(f"C{j + 1}")[row].as_py() for j in range(26)] == ids[row].tolist()
    check_dataset(DatasetMeta.load(out))


@pytest.mark.parametrize("cat_dtype", [np.int32, np.float64])  # float64: what data_utils.py really writes
def test_dlrm_processed_npz_converts(tmp_path: Path, cat_dtype: type) -> None:
    arrays = _reference_arrays()
    arrays["X_cat"] = arrays["X_cat"].astype(cat_dtype)
    src = _write_npz(tmp_path / "raw", arrays)
    assert prep_main(["from-dlrm-npz", str(src), str(tmp_path / "ds"), "--row-group-rows", "32"]) == 0
    _check_reference_rows(tmp_path / "ds", arrays)
    assert read_meta(tmp_path / "ds")["dataset"] == "dlrm-npz"


def test_dlrm_bin_converts(tmp_path: Path) -> None:
    arrays = _reference_arrays(1)
    _write_bins(tmp_path / "bin", arrays)
    assert prep_main(["from-dlrm-bin", str(tmp_path / "bin"), str(tmp_path / "ds")]) == 0
    _check_reference_rows(tmp_path / "ds", arrays)
    meta = read_meta(tmp_path / "ds")
    assert meta["rows_per_source"] == {
        "terabyte_processed_train.bin": 90,
        "terabyte_processed_val.bin": 15,
        "terabyte_processed_test.bin": 16,
    }


def test_max_ind_range_hashes_as_the_reference(tmp_path: Path) -> None:
    arrays = _reference_arrays(2)
    _write_bins(tmp_path / "bin", arrays, prefix="p")
    assert prep_main(["from-dlrm-bin", str(tmp_path / "bin"), str(tmp_path / "ds"), "--max-ind-range", "10"]) == 0
    _check_reference_rows(tmp_path / "ds", arrays, modulo=10)


def test_counts_and_day_counts_found_or_given(tmp_path: Path) -> None:
    """.bin without *_fea_count.npz: sizes max id + 1 (said in meta); .npz with --day-count elsewhere."""
    arrays = _reference_arrays(3)
    _write_bins(tmp_path / "bin", arrays)
    (tmp_path / "bin" / "day_fea_count.npz").unlink()
    assert prep_main(["from-dlrm-bin", str(tmp_path / "bin"), str(tmp_path / "b")]) == 0
    meta = read_meta(tmp_path / "b")
    assert [meta["table_sizes"][f"C{j + 1}"] for j in range(26)] == (arrays["X_cat"].max(axis=0) + 1).tolist()
    assert "max id + 1" in meta["sparse_transform"]
    src = _write_npz(tmp_path / "raw", arrays)
    (tmp_path / "raw" / "train_day_count.npz").rename(tmp_path / "days.npz")
    assert prep_main(["from-dlrm-npz", str(src), str(tmp_path / "n"), "--day-count", str(tmp_path / "days.npz")]) == 0
    _check_reference_rows(tmp_path / "n", arrays)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("label", r"kaggleAdDisplayChallenge_processed.npz: row 17: label 3 is not 0 or 1"),
        ("negative", r"kaggleAdDisplayChallenge_processed.npz: row 60: negative id -1 in C2"),
        ("outside", r"kaggleAdDisplayChallenge_processed.npz: row 95: C4 id 17 is outside its table of 17 ids"),
        ("float", r"X_int is float32: .* would be logged twice"),
        ("fraction", r"kaggleAdDisplayChallenge_processed.npz: row 70: C5 id 3.5 is not a whole number"),
        ("nan", r"kaggleAdDisplayChallenge_processed.npz: row 71: C1 id nan is not a whole number"),
        ("huge", r"kaggleAdDisplayChallenge_processed.npz: row 72: C26 id 1e\+19 is beyond 2,147,483,648 ids"),
        (
            "days",
            r"train_day_count.npz: total_per_file adds up to 120 rows, kaggleAdDisplayChallenge_processed.npz has 121",
        ),
        ("no_days", r"no \*_day_count.npz beside it .* pass --day-count FILE"),
        ("missing", r"missing arrays \['counts'\]"),
    ],
)
def test_bad_dlrm_npz_is_one_line_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage: str, message: str
) -> None:
    arrays = _reference_arrays()
    if damage == "label":
        arrays["y"][17] = 3
    elif damage == "negative":
        arrays["X_cat"][60, 1] = -1
    elif damage == "outside":
        arrays["X_cat"][95, 3] = 17
    elif damage == "float":
        arrays["X_int"] = np.log1p(arrays["X_int"]).astype(np.float32)
    elif damage in ("fraction", "nan", "huge"):
        arrays["X_cat"] = arrays["X_cat"].astype(np.float64)
        row, col, value = {"fraction": (70, 4, 3.5), "nan": (71, 0, np.nan), "huge": (72, 25, 1e19)}[damage]
        arrays["X_cat"][row, col] = value
    elif damage == "missing":
        del arrays["counts"]
    src = _write_npz(tmp_path / "raw", arrays)
    if damage == "days":
        np.savez_compressed(tmp_path / "raw" / "train_day_count.npz", total_per_file=np.array([50, 40, 30]))
    elif damage == "no_days":
        (tmp_path / "raw" / "train_day_count.npz").unlink()
    _one_line_exit_2(["from-dlrm-npz", str(src), str(tmp_path / "ds")], capsys, message, tmp_path / "ds")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", r"terabyte_processed_test.bin: row 15: the file ends 100 bytes into a record"),
        ("label", r"terabyte_processed_train.bin: row 33: label -1 is not 0 or 1"),
        ("negative", r"terabyte_processed_val.bin: row 4: negative id -7 in C26"),
        ("outside", r"terabyte_processed_train.bin: row 2: C1 id 5 is outside its table of 5 ids"),
        ("missing", r"terabyte_processed_val.bin is missing"),
        ("two_sets", r"more than one set of .bin files"),
    ],
)
def test_bad_dlrm_bin_is_one_line_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage: str, message: str
) -> None:
    arrays = _reference_arrays()
    if damage == "label":
        arrays["y"][33] = -1
    elif damage == "negative":
        arrays["X_cat"][90 + 16 + 4, 25] = -7
    elif damage == "outside":
        arrays["X_cat"][2, 0] = 5
    src = tmp_path / "bin"
    _write_bins(src, arrays)
    if damage == "truncated":
        data = (src / "terabyte_processed_test.bin").read_bytes()
        (src / "terabyte_processed_test.bin").write_bytes(data[:-60])
    elif damage == "missing":
        (src / "terabyte_processed_val.bin").unlink()
    elif damage == "two_sets":
        (src / "train_data.bin").write_bytes(b"")
    _one_line_exit_2(["from-dlrm-bin", str(src), str(tmp_path / "ds")], capsys, message, tmp_path / "ds")


# --- NVTabular multi-hot (list columns) -----------------------------------------------------------


def _nvt_list_schema(list_max: int = 5, cat2_list: bool = True) -> str:
    """schema.pbtxt with one single-hot cat_0, a list cat_1 with value_count max, a ragged list cat_2
    without a stated max (Merlin writes list features with value_count and the 'list' tag)."""

    def cat(i: int, card: int, extra: str) -> str:
        tag = '    tag: "list"\n' if "value_count" in extra or (i == 2 and cat2_list) else ""
        return (
            f'feature {{\n  name: "cat_{i}"\n{extra}  type: INT\n  int_domain {{\n    name: "cat_{i}"\n    min: 0\n'
            f"    max: {card - 1}\n    is_categorical: true\n  }}\n  annotation {{\n{tag}"
            f'    tag: "categorical"\n  }}\n}}\n'
        )

    return (
        cat(0, 7, "")
        + cat(1, 50, f"  value_count {{\n    min: 0\n    max: {list_max}\n  }}\n")
        + cat(2, 9, "")
        + 'feature {\n  name: "int_0"\n  type: FLOAT\n  annotation {\n    tag: "continuous"\n  }\n}\n'
        + 'feature {\n  name: "label"\n  type: FLOAT\n  annotation {\n    tag: "target"\n  }\n}\n'
    )


def _bags(rng: np.random.Generator, rows: int, longest: int, card: int) -> List[List[int]]:
    return [rng.integers(0, card, int(n)).tolist() for n in rng.integers(0, longest + 1, rows)]


def _write_nvt_lists(root: Path, rows: Dict[str, List[int]], seed: int = 0) -> Dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    tables = {}
    for split, parts in rows.items():
        (root / split).mkdir(parents=True)
        (root / split / "schema.pbtxt").write_text(_nvt_list_schema())
        pieces = []
        for n, r in enumerate(parts):
            t = pa.table(
                {
                    "cat_0": pa.array(rng.integers(0, 7, r), pa.int64()),
                    "cat_1": pa.array(_bags(rng, r, 4, 50), pa.list_(pa.int64())),
                    "cat_2": pa.array(_bags(rng, r, 6, 9), pa.list_(pa.int32())),
                    "int_0": pa.array(rng.random(r).astype(np.float32)),
                    "label": pa.array(rng.integers(0, 2, r).astype(np.float32)),
                }
            )
            pq.write_table(t, root / split / f"part_{n}.parquet")
            pieces.append(t)
        tables[split] = pa.concat_tables(pieces)
    return tables


def test_nvtabular_list_columns_convert_to_bags(tmp_path: Path) -> None:
    tables = _write_nvt_lists(tmp_path / "nvt", {"train": [60, 50], "validation": [30], "test": [25]})
    out = tmp_path / "ds"
    assert prep_main(["nvtabular", str(tmp_path / "nvt"), str(out), "--row-group-rows", "32"]) == 0
    meta = read_meta(out)
    assert meta["rows_read"] == 165 and {s: meta["splits"][s]["rows"] for s in ("train", "val", "test")} == {
        "train": 110,
        "val": 30,
        "test": 25,
    }
    want = pa.concat_tables([tables[s] for s in ("train", "validation", "test")])
    longest_cat2 = max(len(b) for b in want.column("cat_2").to_pylist())
    assert meta["multi_hot"] == {
        "cat_1": 5,
        "cat_2": longest_cat2,
    }  # stated max (bags hold <= 4); longest when none stated
    assert meta["table_sizes"] == {"cat_0": 7, "cat_1": 50, "cat_2": 9}
    got = _all_rows(out)
    assert got.schema.field("cat_2").type == pa.list_(pa.int64()) and got.schema.field("cat_0").type == pa.int64()
    for row in (0, 59, 60, 109, 110, 139, 140, 164):
        for c in ("label", "int_0", "cat_0", "cat_1", "cat_2"):
            assert got.column(c)[row].as_py() == want.column(c)[row].as_py(), (row, c)
    assert any(len(b) == 0 for b in got.column("cat_1").to_pylist())  # empty bags kept as empty bags
    check_dataset(DatasetMeta.load(out))
    kjt = next(iter(ParquetBatchStream(out, "train", 20))).batch.sparse_features
    assert kjt["cat_1"].lengths().tolist() == [len(b) for b in want.column("cat_1").to_pylist()[:20]]
    assert kjt["cat_2"].values().tolist() == [i for b in want.column("cat_2").to_pylist()[:20] for i in b]


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            "too_long",
            r"train/part_1.parquet: row 6: cat_1 bag of 6 ids is longer than its schema.pbtxt value_count max 5",
        ),
        ("null_id", r"validation/part_0.parquet: row 3: cat_2 has a null id in its bag"),
        ("null_bag", r"train/part_0.parquet: row 2: cat_1 is a null bag"),
        ("out_of_domain", r"test/part_0.parquet: row 7: cat_1 id 50 is outside its schema.pbtxt domain \[0, 49\]"),
        ("scalar_in_parquet", r"train/part_0.parquet: cat_1 is int64 but schema.pbtxt declares a list"),
        (
            "list_not_declared",
            r"train/part_0.parquet: cat_2 is list<element: int32> but schema.pbtxt declares one id per row",
        ),
        ("damaged", r"validation/part_0.parquet: unreadable parquet \("),
    ],
)
def test_bad_nvtabular_lists_are_one_line_and_publish_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage: str, message: str
) -> None:
    src = tmp_path / "nvt"
    _write_nvt_lists(src, {"train": [20, 20], "validation": [20], "test": [20]})

    def edit(rel: str, column: str, fn) -> None:  # type: ignore[no-untyped-def]
        t = pq.read_table(src / rel)
        i = t.schema.get_field_index(column)
        pq.write_table(t.set_column(i, column, fn(t.column(column).combine_chunks())), src / rel)

    def set_bag(rel: str, column: str, row: int, bag) -> None:  # type: ignore[no-untyped-def]
        def fn(col: pa.Array) -> pa.Array:
            bags = col.to_pylist()
            bags[row] = bag
            return pa.array(bags, col.type)

        edit(rel, column, fn)

    if damage == "too_long":
        set_bag("train/part_1.parquet", "cat_1", 6, [1, 2, 3, 4, 5, 6])
    elif damage == "null_id":
        set_bag("validation/part_0.parquet", "cat_2", 3, [1, None])
    elif damage == "null_bag":
        set_bag("train/part_0.parquet", "cat_1", 2, None)
    elif damage == "out_of_domain":
        set_bag("test/part_0.parquet", "cat_1", 7, [3, 50])
    elif damage == "scalar_in_parquet":
        edit(
            "train/part_0.parquet", "cat_1", lambda col: pa.array([(b or [0])[0] for b in col.to_pylist()], pa.int64())
        )
    elif damage == "damaged":  # a cut copy: pyarrow's own error would not say which file
        data = (src / "validation/part_0.parquet").read_bytes()
        (src / "validation/part_0.parquet").write_bytes(data[: len(data) // 2])
    else:
        for d in ("train", "validation", "test"):
            (src / d / "schema.pbtxt").write_text(_nvt_list_schema(cat2_list=False))
    _one_line_exit_2(["nvtabular", str(src), str(tmp_path / "ds")], capsys, message, tmp_path / "ds")


def test_day_blocks_halve_the_last_day_across_block_boundaries() -> None:
    """Every day but the last is train; the last day's first ceil(rows/2) rows are val, the rest
    test, wherever the blocks cut it (blocks of 3 rows: the cut falls inside a block)."""
    import pyarrow as pa

    from data_prep.convert.common import day_blocks

    def table(day: int, lo: int, hi: int) -> pa.Table:
        return pa.table({"day": [day] * (hi - lo), "row": list(range(lo, hi))})

    got: dict = {}
    for split, t in day_blocks([5, 7], 3, table):
        got.setdefault(split, []).extend(zip(t.column("day").to_pylist(), t.column("row").to_pylist()))
    assert got["train"] == [(0, r) for r in range(5)]
    assert got["val"] == [(1, r) for r in range(4)]
    assert got["test"] == [(1, r) for r in range(4, 7)]
