"""What every figure of the sweep report shares: a headless pyplot, arch order, the empty figure."""

from pathlib import Path
from typing import Any, Tuple

from mlet_dist.models.dcn import ARCHS


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (reports are written on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def arch_key(arch: str) -> Tuple[int, str]:
    """Sort key: the archs in ARCHS order (dlrm first), any other after them by name."""
    return (ARCHS.index(arch) if arch in ARCHS else len(ARCHS), arch)


def message_figure(path: Path, text: str) -> None:
    """A small figure that says why there is nothing to plot (the report links every PNG)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    fig.savefig(path, dpi=100)
    plt.close(fig)
