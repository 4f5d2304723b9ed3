"""bench_sharded_step.py's variant list: every chosen variant once per --cpu-table-updates path,
the first path unsuffixed (the ratios' base), the others as 'variant/path'; a typo is refused."""

import argparse
import sys

import pytest

from dist_launch import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_sharded_step as bench  # noqa: E402


def _args(variants: str, updates: str) -> argparse.Namespace:
    return argparse.Namespace(variants=variants, cpu_table_updates=updates)


def test_each_variant_is_built_once_per_table_update_path() -> None:
    builds = bench.timed_builds(_args("mlet_owner", "jit,loop"))
    assert builds == [
        ("mlet_owner", "mlet_owner", "jit"),
        ("ebc_d16", "ebc_d16", "jit"),
        ("mlet_owner/loop", "mlet_owner", "loop"),
        ("ebc_d16/loop", "ebc_d16", "loop"),
    ]
    assert [label for label, _, _ in bench.timed_builds(_args("ebc_d16", "loop,loop"))] == ["ebc_d16"]


def test_an_unknown_table_update_path_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown --cpu-table-updates"):
        bench.timed_builds(_args("mlet_owner", "jit,fast"))
