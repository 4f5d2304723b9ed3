"""Not a package: lets Python run in this clone's parent folder import the real ``mlet_dist``.

A clone named like the package (``git clone .../mlet_dist``) is itself a folder ``mlet_dist``;
Python run in its parent finds that folder first (the working directory leads sys.path) and,
without this file, imported it as an empty namespace package that shadows the editable install:
``from mlet_dist import mlet_collection`` failed with "(unknown location)". With it, the parent
folder imports the clone's package, as Python run inside the clone does. Under another name
(a clone called anything else) this file does nothing.
"""

import importlib.util
import sys
from pathlib import Path

PACKAGE = "mlet_dist"


def _hand_over_to_the_clones_package() -> None:
    """Put the package inside this folder in sys.modules in place of this module (the import
    system returns whatever sys.modules holds once a module has run)."""
    inner = Path(__file__).parent / PACKAGE
    spec = importlib.util.spec_from_file_location(
        PACKAGE, inner / "__init__.py", submodule_search_locations=[str(inner)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)


if __name__ == PACKAGE:
    _hand_over_to_the_clones_package()
