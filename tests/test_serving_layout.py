"""serving/ holds two products, and a module's name says which (issue 30): the serving directory
(mlet-collapse writes it, mlet-predict scores it) and the deploy artifact (mlet-export). "export"
used to name both (serving/export.py wrote the serving dir); now a module only mlet-export reaches
is named ``export_*``, and nothing the serving-dir CLIs reach is.

Read from the import graph (test_layers' finder), so a new module is checked without a list. The
same graph finds dead modules: each one in serving/ is reached from a CLI or the package's public
names (serving/sharded_quant.py was reached only from tests). And the collapse itself (T·W, sharded
or not) is one module, distributed/collapse.py (it spanned modules/collapse.py and
distributed/sharded_collapse.py).
"""

from pathlib import Path
from typing import Dict, List, Set

from test_layers import ROOT, _imports

SERVING = "mlet_dist.serving"
DEPLOY_CLI = f"{SERVING}.export_cli"
SERVING_DIR_CLIS = (f"{SERVING}.collapse_cli", f"{SERVING}.predict_cli")


def _serving_graph(root: Path, through_package: bool = False) -> Dict[str, Set[str]]:
    """serving module -> the serving modules it imports by name; the package __init__ is left out
    unless ``through_package`` (it re-exports both products, so going through it would join them)."""
    inside = SERVING if through_package else SERVING + "."
    graph: Dict[str, Set[str]] = {}
    for importer, imported, _ in _imports(root):
        if importer.startswith(inside) and imported.startswith(inside):
            graph.setdefault(importer, set()).add(imported)
    return graph


def _reached(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), set()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def _short(module: str) -> str:
    return module.rpartition(".")[2]


def naming_problems(root: Path = ROOT) -> List[str]:
    """Modules whose name says the other product, or neither where only one reaches them."""
    graph = _serving_graph(root)
    deploy = _reached(graph, DEPLOY_CLI)
    serving_dir = set().union(*(_reached(graph, cli) for cli in SERVING_DIR_CLIS))
    problems = [
        f"{m} is reached only by mlet-export but is not named export_*"
        for m in sorted(deploy - serving_dir - {DEPLOY_CLI})
        if not _short(m).startswith("export_")
    ]
    problems += [
        f"{m} is reached by a serving-dir CLI (mlet-collapse / mlet-predict) but is named export*"
        for m in sorted(serving_dir)
        if _short(m).startswith("export")
    ]
    return problems


def unreached(root: Path = ROOT) -> List[str]:
    """serving modules no CLI and no public name of the package leads to."""
    graph = _serving_graph(root, through_package=True)
    modules = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts)
        for p in (root / "serving").glob("*.py")
        if p.name != "__init__.py"
    }
    reached = set().union(*(_reached(graph, entry) for entry in (SERVING, DEPLOY_CLI, *SERVING_DIR_CLIS)))
    return sorted(modules - reached)


def test_every_serving_module_is_reached_from_a_cli_or_the_public_names() -> None:
    assert unreached() == []


def test_the_collapse_is_one_module() -> None:
    import mlet_dist
    from mlet_dist.distributed import collapse as one_place

    entries = (
        mlet_dist.collapse,
        mlet_dist.collapse_model,
        mlet_dist.collapse_table,
        one_place.collapse_state_dict,
        one_place.CollapseStats,
    )
    assert {e.__module__ for e in entries} == {"mlet_dist.distributed.collapse"}
    assert (
        not (ROOT / "modules" / "collapse.py").exists() and not (ROOT / "distributed" / "sharded_collapse.py").exists()
    )


def test_serving_modules_are_named_by_their_product() -> None:
    problems = naming_problems()
    assert not problems, "\n".join(problems)


def test_the_check_sees_a_serving_dir_module_named_export(tmp_path: Path) -> None:
    """The tree before issue 30: serving/export.py wrote the serving dir for mlet-collapse."""
    files = {
        "serving/__init__.py": "",
        "serving/export.py": "",
        "serving/collapse_cli.py": "from mlet_dist.serving.export import write\n",
        "serving/predict_cli.py": "",
        "serving/artifact.py": "",
        "serving/export_cli.py": "from mlet_dist.serving.artifact import export_artifact\n",
    }
    for name, source in files.items():
        (tmp_path / "mlet_dist" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mlet_dist" / name).write_text(source)
    assert naming_problems(tmp_path / "mlet_dist") == [
        "mlet_dist.serving.artifact is reached only by mlet-export but is not named export_*",
        "mlet_dist.serving.export is reached by a serving-dir CLI (mlet-collapse / mlet-predict) but is named export*",
    ]
