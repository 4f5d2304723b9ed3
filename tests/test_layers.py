"""The package's layers, enforced: a module imports only its own layer or lower ones, at the top
of the file or inside a function, in any spelling (``from mlet_dist.train import run``, ``from
mlet_dist import train``, ``from .. import train``). A TorchRec-style split (modules/ has no
torch.distributed, models/ no sharding) only lasts if an upward import fails the build. data_prep
sits below them all; its function-local imports of itself are checked like mlet_dist's.

    0  errors, config_io, config_flags, log_setup, digests  shared by everything
    1  modules                                 the math: MLET collection, projection kernel
    2  models, data                            ranking models; parquet batches
    3  distributed, cli_common, api            sharding, process groups; shared CLI pieces; the
                                               public API for TorchRec users (collection, sharders)
    4  training                                config, trainer, checkpoints
    5  planning                                offline shard plans (uses training's optimizer specs)
    6  serving, sweep                          export, scoring; accuracy studies
    7  train (the entry script), __init__ (the package's public names, re-exported from below)
"""

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1] / "mlet_dist"
LAYERS: Dict[str, int] = {
    "errors": 0,
    "config_io": 0,
    "config_flags": 0,
    "log_setup": 0,
    "digests": 0,
    "modules": 1,
    "models": 2,
    "data": 2,
    "distributed": 3,
    "cli_common": 3,
    "api": 3,
    "training": 4,
    "planning": 5,
    "serving": 6,
    "sweep": 6,
    "train": 7,
    "__init__": 7,
}
# Function-local imports of our own modules that are lazy on purpose (a CLI's heavy imports
# deferred past argument parsing, or an optional path). Anything new here is a review decision.
LAZY_ALLOWED = {
    ("mlet_dist.train", "mlet_dist.modules.collapse"),
    ("mlet_dist.train", "mlet_dist.modules.mlet_embedding_bag"),
    ("mlet_dist.planning.plan_io", "mlet_dist.modules.mlet_embedding_bag"),
    ("mlet_dist.training.resume_check", "mlet_dist.training.config"),
    ("mlet_dist.serving.model", "mlet_dist.models.embedding_tables"),
    ("mlet_dist.serving.serving_dir_writer", "mlet_dist.data.parquet_batches"),
    ("mlet_dist.serving.load", "mlet_dist.distributed.sharding"),
}
LAZY_CLI_PREFIXES = (
    "mlet_dist.planning.cli",
    "mlet_dist.sweep.cli",
    "mlet_dist.serving.predict_cli",
    "mlet_dist.serving.collapse_cli",
    "mlet_dist.serving.export_cli",
)  # CLIs: any own layer


OWN_PACKAGES = ("mlet_dist", "data_prep")
# data_prep's function-local imports of its own modules: none are lazy on purpose today.
DATA_PREP_LAZY_ALLOWED: Set[Tuple[str, str]] = set()

Import = Tuple[str, str, bool]  # (importer, imported module, at module level)


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    assert key in LAYERS, f"{module}: package part {key!r} has no layer; add it to LAYERS"
    return LAYERS[key]


def _is_own(module: str) -> bool:
    return module.split(".")[0] in OWN_PACKAGES


class _Finder(ast.NodeVisitor):
    """Every import of our own packages in one file, named by the module it loads: ``from
    mlet_dist import train`` loads mlet_dist.train (not the package's __init__), and relative
    imports are resolved against the importer's package, so no spelling hides an import."""

    def __init__(self, module: str, package: str, tree_root: Path) -> None:
        self.module, self.package, self.tree_root = module, package, tree_root
        self.depth = 0
        self.found: List[Import] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function  # type: ignore[assignment]

    def _record(self, imported: str) -> None:
        if _is_own(imported):
            self.found.append((self.module, imported, self.depth == 0))

    def _is_module(self, dotted: str) -> bool:
        path = self.tree_root.joinpath(*dotted.split("."))
        return path.with_suffix(".py").is_file() or path.is_dir()

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = self._absolute(node)
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            self._record(submodule if self._is_module(submodule) else source)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._record(alias.name)


def _imports(root: Path = ROOT) -> List[Import]:
    """(importer, imported, at module level) for every import of our packages under ``root``."""
    found: List[Import] = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        finder = _Finder(module, package, root.parent)
        finder.visit(ast.parse(path.read_text()))
        found += finder.found
    return found


def _upward(imports: List[Import]) -> List[str]:
    return [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, b, _ in imports
        if b.startswith("mlet_dist") and _layer(b) > _layer(a)
    ]


def _unlisted_lazy(imports: List[Import], allowed: Set[Tuple[str, str]], exempt: Tuple[str, ...] = ()) -> List[str]:
    """Function-local imports of the importer's own package that no one decided to keep lazy."""
    local = {
        (a, b) for a, b, top in imports if not top and a.split(".")[0] == b.split(".")[0] and not a.startswith(exempt)
    }
    return [f"{a} imports {b} inside a function" for a, b in sorted(local - allowed)]


def test_no_module_imports_a_higher_layer() -> None:
    upward = _upward(_imports())
    assert not upward, "\n".join(upward)


def test_function_local_imports_are_the_documented_lazy_ones() -> None:
    unlisted = _unlisted_lazy(_imports(), LAZY_ALLOWED, LAZY_CLI_PREFIXES)
    assert not unlisted, "new function-local imports (move them to the top):\n" + "\n".join(unlisted)


def test_data_prep_function_local_imports_are_the_documented_lazy_ones() -> None:
    unlisted = _unlisted_lazy(_imports(ROOT.parent / "data_prep"), DATA_PREP_LAZY_ALLOWED)
    assert not unlisted, "new function-local imports (move them to the top):\n" + "\n".join(unlisted)


def test_data_prep_imports_nothing_of_mlet_dist() -> None:
    """data_prep is below every layer: mlet_dist reads its format and metrics (dataset_format,
    metrics), never the reverse, and importing mlet_dist would pull torch into data_prep."""
    found = [(a, b) for a, b, _ in _imports(ROOT.parent / "data_prep") if b.startswith("mlet_dist")]
    assert not found, f"data_prep imports mlet_dist: {found}"


def _planted(tmp_path: Path, files: Dict[str, str]) -> Path:
    """A fake checkout holding ``files`` (relative path -> source); returns its root."""
    for name, source in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    return tmp_path


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself, on a planted tree: modules/ importing training/ inside a function."""
    root = _planted(
        tmp_path,
        {"mlet_dist/modules/bad.py": "import torch\n\ndef f():\n    from mlet_dist.training.trainer import Trainer\n"},
    )
    found = _imports(root / "mlet_dist")
    assert found == [("mlet_dist.modules.bad", "mlet_dist.training.trainer", False)]
    assert _upward(found) == ["mlet_dist.modules.bad (layer 1) imports mlet_dist.training.trainer (layer 4)"]


def test_the_check_sees_a_module_imported_from_its_package(tmp_path: Path) -> None:
    """``from mlet_dist import train`` loads mlet_dist.train, not the package: named as such, and
    ``from mlet_dist import errors`` (layer 0) is no upward import of the package's __init__."""
    root = _planted(
        tmp_path,
        {
            "mlet_dist/train.py": "",
            "mlet_dist/errors.py": "",
            "mlet_dist/training/trainer.py": "",
            "mlet_dist/serving/bad.py": "from mlet_dist import train\n",
            "mlet_dist/modules/bad.py": "from mlet_dist import errors\nfrom mlet_dist.training import trainer\n",
        },
    )
    assert _upward(_imports(root / "mlet_dist")) == [
        "mlet_dist.modules.bad (layer 1) imports mlet_dist.training.trainer (layer 4)",
        "mlet_dist.serving.bad (layer 6) imports mlet_dist.train (layer 7)",
    ]


def test_the_check_sees_relative_imports(tmp_path: Path) -> None:
    root = _planted(
        tmp_path,
        {
            "mlet_dist/train.py": "",
            "mlet_dist/serving/__init__.py": "from .. import train\n",
            "mlet_dist/serving/bad.py": "def f():\n    from ..train import run\n    from . import export\n",
            "mlet_dist/serving/export.py": "",
        },
    )
    found = _imports(root / "mlet_dist")
    assert set(found) == {
        ("mlet_dist.serving", "mlet_dist.train", True),
        ("mlet_dist.serving.bad", "mlet_dist.train", False),
        ("mlet_dist.serving.bad", "mlet_dist.serving.export", False),
    }
    assert len(_upward(found)) == 2


def test_the_check_sees_a_lazy_import_in_data_prep(tmp_path: Path) -> None:
    root = _planted(
        tmp_path,
        {
            "data_prep/textio.py": "",
            "data_prep/engine.py": "def f():\n    from distributed import Client\n",
            "data_prep/bad.py": "def f():\n    from data_prep import textio\n    import data_prep.engine\n",
        },
    )
    assert _unlisted_lazy(_imports(root / "data_prep"), DATA_PREP_LAZY_ALLOWED) == [
        "data_prep.bad imports data_prep.engine inside a function",
        "data_prep.bad imports data_prep.textio inside a function",
    ]
