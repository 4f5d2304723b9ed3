"""Command-line pieces shared by mlet-train and mlet-plan, so both describe a model the same way
(a plan made with mlet-plan must fit the model mlet-train builds from the same flags)."""

import argparse
from typing import Callable, List, Optional, Sequence, Set


def int_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


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
    """"1 rank" / "2 ranks": the messages that name a world size."""
    return f"{n} rank" if n == 1 else f"{n} ranks"


def add_model_shape_args(p: argparse.ArgumentParser) -> None:
    """--model, -d, -k, --bottom-mlp, --top-mlp, --arch, --dcn-layers, --dcn-low-rank."""
    from mlet_dist.models.dcn import ARCHS, DCNConfig

    p.add_argument("--model", choices=["mlet", "baseline"], default="mlet",
                   help="mlet: k-wide tables + k×d projection; baseline: stock EBC at width d")
    p.add_argument("--embedding-dim", "-d", type=int, default=16, help="output width d")
    p.add_argument("--inner-dim", "-k", type=int, default=64, help="MLET inner width k (>= d)")
    p.add_argument("--bottom-mlp", type=int_list, default=[512, 256, 64], help="d is appended")
    p.add_argument("--top-mlp", type=int_list, default=[512, 256, 1])
    p.add_argument("--arch", choices=ARCHS, default="dlrm",
                   help="dlrm: dot interaction; dcnv2: cross network over [bottom-MLP output, all "
                   "embeddings], then --top-mlp as the deep network")
    p.add_argument("--dcn-layers", type=int, default=DCNConfig.cross_layers, help="dcnv2: cross layers")
    p.add_argument("--dcn-low-rank", type=int, default=DCNConfig.low_rank,
                   help="dcnv2: rank of each cross layer's matrix; 0 = full-rank CrossNet")
