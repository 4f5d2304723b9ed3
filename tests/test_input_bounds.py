"""Ids are checked without a host sync per step: the reader validates every row group, and the
sharded kernels run fbgemm's bounds check in FATAL mode (distributed/sharding.py). This guards the
second line: an id past its table that reaches the kernels raises instead of silently becoming
row 0 (fbgemm's default WARNING mode)."""

import json
from pathlib import Path

from dist_launch import ROOT, torchrun


def test_out_of_range_id_in_the_sharded_kernel_raises(tmp_path: Path) -> None:
    out = tmp_path / "bounds.json"
    torchrun(ROOT / "tests" / "workers" / "bounds_check_worker.py", ["--out", str(out)], nproc=1)
    results = json.loads(out.read_text())
    assert set(results) == {"mlet table_wise", "mlet row_wise", "baseline table_wise", "baseline row_wise"}
    for key, outcome in results.items():
        assert outcome != "accepted" and "idx < num_rows" in outcome, (key, outcome)
