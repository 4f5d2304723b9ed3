"""--plan files are checked before anything is sharded (planning/plan_io.load_checked_plan): a
file that is no plan, or names a compute kernel TorchRec lacks, is one user error naming it."""

import json
from pathlib import Path

import pytest
from torch import nn

from mlet_dist.errors import UserError
from mlet_dist.planning.plan_io import PlanMismatchError, load_checked_plan


def _plan_file(tmp_path: Path, tables: object) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format_version": 1, "topology": {"world_size": 1}, "plan": tables}))
    return path


def test_an_unknown_compute_kernel_is_refused_naming_the_table(tmp_path: Path) -> None:
    path = _plan_file(
        tmp_path,
        {"model.sparse": {"t_C1": {"sharding_type": "table_wise", "compute_kernel": "warp_drive", "ranks": [0]}}},
    )
    with pytest.raises(PlanMismatchError, match=r"table 't_C1' names compute kernel 'warp_drive'; TorchRec knows"):
        load_checked_plan(path, nn.Module(), 1, "cpu")


def test_json_that_is_no_plan_is_a_user_error(tmp_path: Path) -> None:
    path = _plan_file(tmp_path, ["not", "a", "plan"])
    with pytest.raises(UserError, match=r"is not a sharding plan \(mlet-plan or a run's plan.json\): AttributeError"):
        load_checked_plan(path, nn.Module(), 1, "cpu")


def test_a_missing_plan_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checked_plan(tmp_path / "nope.json", nn.Module(), 1, "cpu")
