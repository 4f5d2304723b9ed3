"""Command-line pieces shared by the CLIs (mlet-train, mlet-plan, train.py's messages). The model
flags themselves are declared once, on ModelConfig's fields (models/ranking.py, config_flags.py)."""

import argparse
from typing import Callable, Optional, Sequence, Set


def given_dests(build_parser: Callable[[], argparse.ArgumentParser], argv: Optional[Sequence[str]]) -> Set[str]:
    """The dests ``argv`` sets explicitly, not left at their defaults (a fresh parser whose
    defaults are SUPPRESS, argparse's way to leave an absent flag out of the namespace). How
    flags given beside ``--config FILE`` override it (mlet-train) or clash with it (mlet-plan)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(parser.parse_args(argv)))


def ranks_phrase(n: object) -> str:
    """ "1 rank" / "2 ranks": the messages that name a world size."""
    return f"{n} rank" if n == 1 else f"{n} ranks"
