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
    for message in NOISE:  # by message: any other warning still reaches the user
        warnings.filterwarnings("ignore", message=message)


DENSE_LOOKUP_NO_AUTOGRAD_KEY = (
    r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered to the Autograd key"
)

# Warnings seen on every run that say nothing about the user's job (torch 2.13, torchrec 1.8).
NOISE = (
    r".*deprecating ShardedTensor",  # TorchRec's own sharded state still uses it
    r".*`broadcast_buffers` is deprecated",  # DMP's DDP wrapper
    r".*HeuristicalStorageReservation is known to cause issues",  # planner dry-run note
    r".*is_fx_tracing will return true",  # TrainPipelineSparseDist's tracer
    r".*TypedStorage is deprecated",
    # DCP warns on every load without a process group, even when asked for one (no_dist=True): the
    # serving loaders load the whole model in one process on purpose.
    r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to load in a single process",
    # TorchScript, scripting predict modules (mlet-export): torch.fx's own GraphModule.__init__ annotates
    # empty containers, and TorchRec's KJT helpers annotate torch.IntTensor; the scripted modules are
    # checked against the eager model on export (artifact.json "checks"), so neither changes a result.
    r"The TorchScript type system doesn't support instance-level annotations on empty non-base types",
    r"TorchScript will treat type annotations of Tensor dtype-specific subtypes as if they are normal Tensors",
    # Data-parallel tables (dense kernel), once per rank: fbgemm registers this op for the CPU key only
    # and builds its own autograd node inside the kernel, so torch's fallback merely hooks a warning on
    # the output; the gradient is fbgemm's dense backward, checked against nn.functional.embedding_bag
    # (tests/test_quiet_warnings.py) and against one process on 2 ranks (test_sharded_equivalence.py).
    DENSE_LOOKUP_NO_AUTOGRAD_KEY,
)
