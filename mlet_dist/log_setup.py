"""Keep the console readable: TorchRec's planner and DDP emit many warnings that are not the
user's concern on every run. MLET_VERBOSE=1 brings them back."""

import logging
import os
import warnings


def quiet_library_logs() -> None:
    if os.environ.get("MLET_VERBOSE"):
        return
    # The planner warns on the root logger for every data-parallel table (they have no shard spec).
    logging.getLogger().addFilter(lambda record: not str(record.msg).startswith("Sharding spec not found"))
    for name in ("torchrec", "fbgemm_gpu", "torch.distributed.checkpoint", "torch.fx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
