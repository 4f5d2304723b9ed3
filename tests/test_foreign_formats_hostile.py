"""Issue 32's hostile inputs to the converters: each one runs the `mlet-prep` CLI as a user would
and must end with exit != 0, one `error:` line on stderr (no traceback) and nothing published. Before
the fixes these published inf dense values, negative ids with tables of 9.2e18 rows, a 1e22-row
table, half of an NVTabular split, an empty split for a FIFO, or printed 15-50 line tracebacks."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_foreign_formats import _nvt_schema, _write_days, _write_nvt
from test_foreign_formats_more import _reference_arrays, _write_bins, _write_mlperf, _write_npz
from test_foreign_peer_tools import assert_refused, prep

HUGE = np.uint64(1 << 63)


def _torchrec_dense_1e300(src: Path) -> List[str]:
    days = _write_days(src, [30, 30])
    dense = days[0][0].astype(np.float64)
    dense[4, 2] = 1e300
    np.save(src / "day_0_dense.npy", dense)
    return ["from-torchrec-npy", str(src)]


def _torchrec_uint64_id(src: Path) -> List[str]:
    days = _write_days(src, [30, 30])
    sparse = days[1][1].astype(np.uint64)
    sparse[6, 3] = HUGE
    np.save(src / "day_1_sparse.npy", sparse)
    return ["from-torchrec-npy", str(src)]


def _mlperf_dense_1e300(src: Path) -> List[str]:
    days = _write_mlperf(src, [30, 30])
    dense = days[1]["dense"].astype(np.float64)
    dense[2, 0] = 1e300
    np.save(src / "day_1_dense.npy", dense)
    return ["from-mlperf-multihot", str(src)]


def _mlperf_uint64_id(src: Path) -> List[str]:
    days = _write_mlperf(src, [30, 30])
    bags = {str(j): days[0][str(j)].astype(np.uint64) for j in range(26)}
    bags["4"][9, 0] = HUGE + np.uint64(5)
    np.savez(src / "day_0_sparse_multi_hot.npz", **bags)
    return ["from-mlperf-multihot", str(src)]


def _mlperf_deflated_1e12(src: Path) -> List[str]:
    """A compressed member whose .npy header declares 10^12 int32 but which holds a few bytes."""
    days = _write_mlperf(src, [30, 30])
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.int32))
    header["shape"] = (1_000_000, 1_000_000)
    member = bytearray()

    class Sink:
        def write(self, data: bytes) -> None:
            member.extend(data)

    np.lib.format.write_array_header_1_0(Sink(), header)
    with zipfile.ZipFile(src / "day_1_sparse_multi_hot.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        for j in range(26):
            data = bytes(member) + b"\0" * 64 if j == 7 else _npy_bytes(days[1][str(j)])
            zf.writestr(f"{j}.npy", data)
    return ["from-mlperf-multihot", str(src)]


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _dlrm_uint64_id(src: Path) -> List[str]:
    arrays = _reference_arrays()
    arrays["X_cat"] = arrays["X_cat"].astype(np.uint64)
    arrays["X_cat"][12, 20] = HUGE
    return ["from-dlrm-npz", str(_write_npz(src, arrays))]


def _dlrm_bin_fifo(src: Path) -> List[str]:
    _write_bins(src, _reference_arrays())
    (src / "terabyte_processed_val.bin").unlink()
    os.mkfifo(src / "terabyte_processed_val.bin")
    return ["from-dlrm-bin", str(src)]


def _nvt(src: Path) -> Dict[str, pa.Table]:
    return _write_nvt(src, {"train": [100, 100], "validation": [40]})


def _nvt_dense_1e300(src: Path) -> List[str]:
    tables = _nvt(src)
    table = tables["validation"]
    values = table.column("int_1").to_numpy().astype(np.float64)
    values[17] = 1e300
    table = table.set_column(table.schema.get_field_index("int_1"), "int_1", pa.array(values))
    pq.write_table(table, src / "validation" / "part_0.parquet")
    return ["from-nvtabular", str(src)]


def _nvt_schema_text(src: Path, text: str) -> List[str]:
    _nvt(src)
    for split in ("train", "validation"):
        (src / split / "schema.pbtxt").write_text(text)
    return ["from-nvtabular", str(src)]


def _nvt_domain_1e22(src: Path) -> List[str]:
    return _nvt_schema_text(src, _nvt_schema([7, 50, 3]).replace("max: 49", "max: " + "1" + "0" * 22, 1))


def _nvt_nested_braces(src: Path) -> List[str]:
    return _nvt_schema_text(src, _nvt_schema([7, 50, 3]) + "feature { x " + "{ y " * 3000 + "}" * 3001)


def _nvt_bad_type(src: Path) -> List[str]:
    bad = _nvt_schema([7, 50, 3]).replace("max: 6", "max { not_a_number: 1 }", 1)
    return _nvt_schema_text(src, bad)


def _nvt_feature_not_a_message(src: Path) -> List[str]:
    return _nvt_schema_text(src, 'feature: "cat_0"\n' + _nvt_schema([7, 50, 3]))


def _nvt_part(make: Callable[[Path], None]) -> Callable[[Path], List[str]]:
    def build(src: Path) -> List[str]:
        _nvt(src)
        make(src / "train" / "part_1.parquet")
        return ["from-nvtabular", str(src)]

    return build


def _dangling(part: Path) -> None:
    part.unlink()
    part.symlink_to(part.parent / "gone.parquet")


def _loop(part: Path) -> None:
    part.unlink()
    part.symlink_to(part)


def _directory(part: Path) -> None:
    part.unlink()
    part.mkdir()


CASES = {
    "torchrec dense 1e300": (
        _torchrec_dense_1e300,
        r"day_0_dense.npy: row 4: dense value 1e\+300 does not fit float32",
    ),
    "torchrec uint64 id": (
        _torchrec_uint64_id,
        r"day_1_sparse.npy: row 6: C4 id 9223372036854775808 does not fit int64",
    ),
    "mlperf dense 1e300": (_mlperf_dense_1e300, r"day_1_dense.npy: row 2: dense value 1e\+300 does not fit float32"),
    "mlperf uint64 id": (
        _mlperf_uint64_id,
        r"day_0_sparse_multi_hot.npz: row 9: C5 \(member '4'\) id 9223372036854775813 "
        r"does not fit int64",
    ),
    "mlperf deflated 1e12": (
        _mlperf_deflated_1e12,
        r"day_1_sparse_multi_hot.npz: member '7.npy' declares "
        r"\(1000000, 1000000\) .* but holds at most",
    ),
    "dlrm uint64 id": (_dlrm_uint64_id, r"processed.npz: row 12: C21 id 9223372036854775808 does not fit int64"),
    "dlrm-bin fifo": (_dlrm_bin_fifo, r"terabyte_processed_val.bin: not a regular file"),
    "nvt dense 1e300": (
        _nvt_dense_1e300,
        r"validation/part_0.parquet: row 17: int_1 is 1e\+300 \(does not fit float32\)",
    ),
    "nvt domain 1e22": (_nvt_domain_1e22, r"schema.pbtxt: 'cat_1' int_domain max is 10{22}, expected 0..2,147,483,648"),
    "nvt nested braces": (_nvt_nested_braces, r"schema.pbtxt: messages nested more than 32 deep"),
    "nvt bad type": (_nvt_bad_type, r"schema.pbtxt: 'cat_0' int_domain max is \{.*\}, expected an integer"),
    "nvt feature string": (_nvt_feature_not_a_message, r"schema.pbtxt: feature is 'cat_0', expected a message"),
    "nvt dangling part": (_nvt_part(_dangling), r"train/part_1.parquet: missing \(a dangling symlink\)"),
    "nvt symlink loop": (_nvt_part(_loop), r"train/part_1.parquet: cannot be read \(.*symbolic links.*\)"),
    "nvt directory part": (_nvt_part(_directory), r"train/part_1.parquet: not a regular file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_error_line_and_publishes_nothing(tmp_path: Path, case: str) -> None:
    build, message = CASES[case]
    argv = build(tmp_path / "src")
    out = tmp_path / "out"
    assert_refused(prep(*argv, str(out)), message, out)
