"""The package's layers, enforced: a module imports only its own layer or lower ones, at the top
of the file or inside a function. A TorchRec-style split (modules/ has no torch.distributed,
models/ no sharding) only lasts if an upward import fails the build.

    0  errors, config_io, config_flags, log_setup, digests  shared by everything
    1  modules                                 the math: MLET collection, collapse
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
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1] / "mlet_dist"
LAYERS: Dict[str, int] = {
    "errors": 0, "config_io": 0, "config_flags": 0, "log_setup": 0, "digests": 0,
    "modules": 1, "models": 2, "data": 2, "distributed": 3, "cli_common": 3, "api": 3,
    "training": 4, "planning": 5, "serving": 6, "sweep": 6, "train": 7, "__init__": 7,
}
# Function-local imports of our own modules that are lazy on purpose (a CLI's heavy imports
# deferred past argument parsing, or an optional path). Anything new here is a review decision.
LAZY_ALLOWED = {
    ("mlet_dist.train", "mlet_dist.modules.collapse"),
    ("mlet_dist.train", "mlet_dist.modules.mlet_embedding_bag"),
    ("mlet_dist.planning.plan_io", "mlet_dist.modules.mlet_embedding_bag"),
    ("mlet_dist.training.resume_check", "mlet_dist.training.config"),
    ("mlet_dist.serving.model", "mlet_dist.models.embedding_tables"),
    ("mlet_dist.serving.export", "mlet_dist.data.parquet_batches"),
    ("mlet_dist.serving.load", "mlet_dist.distributed.sharding"),
}
LAZY_CLI_PREFIXES = ("mlet_dist.planning.cli", "mlet_dist.sweep.cli", "mlet_dist.serving.predict_cli",
                     "mlet_dist.serving.collapse_cli", "mlet_dist.serving.export_cli")  # CLIs: any own layer


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    assert key in LAYERS, f"{module}: package part {key!r} has no layer; add it to LAYERS"
    return LAYERS[key]


class _Finder(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module, self.depth, self.found = module, 0, []  # type: ignore[var-annotated]

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function  # type: ignore[assignment]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.module.startswith("mlet_dist"):
            self.found.append((self.module, node.module, self.depth == 0))

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(self.module, a.name, self.depth == 0) for a in node.names if a.name.startswith("mlet_dist")]


def _imports(root: Path = ROOT) -> List[Tuple[str, str, bool]]:
    """(importer, imported, at module level) for every import of mlet_dist.* under ``root``."""
    found: List[Tuple[str, str, bool]] = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        finder = _Finder(module)
        finder.visit(ast.parse(path.read_text()))
        found += finder.found
    return found


def _upward(imports: List[Tuple[str, str, bool]]) -> List[str]:
    return [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})" for a, b, _ in imports if _layer(b) > _layer(a)]


def test_no_module_imports_a_higher_layer() -> None:
    upward = _upward(_imports())
    assert not upward, "\n".join(upward)


def test_function_local_imports_are_the_documented_lazy_ones() -> None:
    local = {(a, b) for a, b, top in _imports() if not top and not a.startswith(LAZY_CLI_PREFIXES)}
    assert local <= LAZY_ALLOWED, f"new function-local imports (move them to the top): {sorted(local - LAZY_ALLOWED)}"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself, on a planted tree: modules/ importing training/ inside a function."""
    (tmp_path / "mlet_dist" / "modules").mkdir(parents=True)
    (tmp_path / "mlet_dist" / "modules" / "bad.py").write_text(
        "import torch\n\ndef f():\n    from mlet_dist.training.trainer import Trainer\n    return Trainer\n")
    found = _imports(tmp_path / "mlet_dist")
    assert found == [("mlet_dist.modules.bad", "mlet_dist.training.trainer", False)]
    assert _upward(found) == ["mlet_dist.modules.bad (layer 1) imports mlet_dist.training.trainer (layer 4)"]


def test_data_prep_imports_nothing_of_mlet_dist() -> None:
    """data_prep is below every layer: mlet_dist reads its format and metrics (dataset_format,
    metrics), never the reverse, and importing mlet_dist would pull torch into data_prep."""
    found = [(a, b) for a, b, _ in _imports(ROOT.parent / "data_prep")]
    assert not found, f"data_prep imports mlet_dist: {found}"
