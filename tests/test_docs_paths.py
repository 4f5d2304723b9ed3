"""Every project path the docs name exists (issue 30 item 6): modules move, and a doc that still names
the old place sends a reader to nothing. A backticked span that is a path (no spaces or placeholders)
whose first part is a top-level folder of the repo, or a subpackage of mlet_dist (the docs write
`training/loop.py` for `mlet_dist/training/loop.py`), must exist; other tools' files
(`torchrec_dlrm/...`) and run outputs (`runs/...`, `vocab/C1.parquet`) are not checked."""

import re
from pathlib import Path

import pytest

from dist_launch import ROOT

DOCS = ["README.md", "docs/architecture.md", "data_prep/FORMAT.md", "benchmarks/README.md", "reports/README.md"]
ROOT_DIRS = {
    "mlet_dist",
    "data_prep",
    "benchmarks",
    "tests",
    "reports",
    "configs",
    "launch",
    "scripts",
    "docs",
    "sharding_plans",
    "requirements",
}
SUBPACKAGES = {p.name for p in (ROOT / "mlet_dist").iterdir() if (p / "__init__.py").exists()}
DATA_PREP_SUBPACKAGES = {p.name for p in (ROOT / "data_prep").iterdir() if (p / "__init__.py").exists()}
PATH_SPAN = re.compile(r"`([A-Za-z_][\w.-]*/[\w./-]*)(?::\w+)?`")


def named_paths(text: str) -> list[str]:
    """Backticked spans that are a whole path (`a/b.py`, `a/b/`, `a/b.py:fn`), in order."""
    return PATH_SPAN.findall(text)


def resolve(path: str) -> Path | None:
    """Where the doc's path points in this repo; None for paths the test does not own (see module doc).
    FORMAT.md sits in data_prep/ and names data_prep's subpackages from there (`parallel/driver.py`)."""
    first = path.split("/")[0]
    if first in ROOT_DIRS:
        return ROOT / path
    if first in SUBPACKAGES:
        return ROOT / "mlet_dist" / path
    if first in DATA_PREP_SUBPACKAGES:
        return ROOT / "data_prep" / path
    return None


def missing_paths(doc: str) -> list[str]:
    text = (ROOT / doc).read_text()
    paths = dict.fromkeys(named_paths(text))  # each once, in order
    return [p for p in paths if (target := resolve(p)) is not None and not target.exists()]


def test_the_path_pattern_sees_module_paths() -> None:
    spans = named_paths(
        "see `mlet_dist/training/loop.py`, `training/loop.py:run`, `data_prep/parallel/`, "
        "`RUN_DIR/errors/rank<r>.log`, `a b/c.py` and `x.py`"
    )
    assert spans == ["mlet_dist/training/loop.py", "training/loop.py", "data_prep/parallel/"]
    assert resolve("training/nope.py") == ROOT / "mlet_dist" / "training" / "nope.py"
    assert resolve("torchrec_dlrm/data/multi_hot_criteo.py") is None


@pytest.mark.parametrize("doc", DOCS)
def test_every_named_project_path_exists(doc: str) -> None:
    assert (ROOT / doc).exists(), doc
    missing = missing_paths(doc)
    assert not missing, f"{doc} names paths that do not exist: {missing}"
