"""Command-line pieces shared by mlet-train and mlet-plan, so both describe a model the same way
(a plan made with mlet-plan must fit the model mlet-train builds from the same flags)."""

import argparse
from typing import List


def int_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


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
