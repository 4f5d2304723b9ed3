"""mlet_dist: distributed Multi-Layer Embedding Training (MLET) for recommendation models.

As a library (README "As a library"): ``mlet_collection`` builds MLET tables from TorchRec
EmbeddingBagConfigs, ``sharders()`` goes to DistributedModelParallel.
"""

import os
import sys

# torch / fbgemm-gpu(-cpu) / torchrec are not all pip dependencies of this package: pip cannot
# resolve the CPU triplet alone (torchrec 1.8 requires the CUDA `fbgemm-gpu`), so a missing or
# unloadable one is said in one line naming the install, not a ModuleNotFoundError deep in an import.
STACK_INSTALL = (
    "mlet_dist needs torch, fbgemm-gpu (or fbgemm-gpu-cpu) and torchrec: install with "
    "`pip install 'mlet_dist[cpu]' --extra-index-url https://download.pytorch.org/whl/cpu` then "
    "`pip install --no-deps torchrec==1.8.0` (CPU), or `pip install 'mlet_dist[cuda]'` (CUDA); "
    'in a checkout scripts/setup_env.sh (README "As a library")'
)


def _refuse_missing_stack(err: BaseException) -> None:
    """One line: an ImportError for a library import, ``error: ...`` and exit 2 for the CLIs."""
    what = getattr(err, "name", None) or str(err).splitlines()[0][:200]
    line = f"{STACK_INSTALL} ({type(err).__name__}: {what})"
    if os.path.basename(sys.argv[0] if sys.argv else "").startswith("mlet-"):
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(line) from None


try:
    import fbgemm_gpu  # noqa: F401  (the CUDA build on a CPU box fails here with an OSError)
    import torch  # noqa: F401
    import torchrec  # noqa: F401
except (ImportError, OSError) as _err:
    _refuse_missing_stack(_err)

from mlet_dist.api import mlet_collection, mlet_tables, sharders  # noqa: E402
from mlet_dist.distributed.sharded_mlet import MLETEmbeddingBagCollectionSharder  # noqa: E402
from mlet_dist.distributed.collapse import collapse, collapse_model, collapse_table  # noqa: E402
from mlet_dist.modules import MLETEmbeddingBagCollection, MLETTableConfig  # noqa: E402
from mlet_dist.modules.mlet_embedding_bag import MLETShardingWarning  # noqa: E402

__all__ = [
    "MLETEmbeddingBagCollection",
    "MLETEmbeddingBagCollectionSharder",
    "MLETShardingWarning",
    "MLETTableConfig",
    "collapse",
    "collapse_model",
    "collapse_table",
    "mlet_collection",
    "mlet_tables",
    "sharders",
]
